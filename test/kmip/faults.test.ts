// Misbehaving KMIP servers (a local tls.createServer with test certificates): every kind of bad
// answer must end in a typed error, never a hang or a crash.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import tls from 'node:tls';
import fc from 'fast-check';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { generateTestPki, type TestPki } from '../helpers/pykmip.js';
import { KmipClient, KmipError, KmipKeyProvider } from '../../src/kmip/index.js';
import { TtlvWriter, decodeTtlv, type TtlvItem } from '../../src/kmip/ttlv.js';
import { requireChild } from '../../src/kmip/messages.js';
import { KeyFormatType, ObjectType, Operation, ResultReason, ResultStatus, Tag } from '../../src/kmip/tags.js';
import { fuzzParams } from '../helpers/fuzz.js';

let dir: string;
let pki: TestPki;

beforeAll(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'vmseal-kmip-faults-'));
  pki = await generateTestPki(path.join(dir, 'certs'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const sampleGetResponse = (() => {
  const samples = JSON.parse(readFileSync(new URL('../fixtures/kmip/pykmip-samples.json', import.meta.url), 'utf8')).samples as Array<{
    id: string;
    direction: string;
    hex: string;
  }>;
  return Buffer.from(samples.find((s) => s.id === 'get' && s.direction === 'response')!.hex, 'hex');
})();

type Handler = (request: TtlvItem, socket: tls.TLSSocket, connectionIndex: number) => void;

interface FakeKms {
  port: number;
  connections: number;
  requests: number;
  close(): Promise<void>;
}

/** A TLS server (mutual auth with the test PKI) that frames KMIP requests and lets `handler` answer. */
async function fakeKms(handler: Handler, opts: { raw?: (socket: tls.TLSSocket) => void } = {}): Promise<FakeKms> {
  const sockets = new Set<tls.TLSSocket>();
  const state = { connections: 0, requests: 0 };
  const server = tls.createServer(
    { key: pki.server.key, cert: pki.server.cert, ca: pki.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' },
    (socket) => {
      const index = state.connections++;
      socket.setNoDelay(true); // else Nagle + delayed ACK add ~40 ms to every split write
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => undefined);
      if (opts.raw) return opts.raw(socket);
      let buf = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        buf = Buffer.concat([buf, chunk]);
        while (buf.length >= 8) {
          const total = 8 + buf.readUInt32BE(4);
          if (buf.length < total) return;
          const msg = buf.subarray(0, total);
          buf = buf.subarray(total);
          state.requests++;
          handler(decodeTtlv(msg), socket, index);
        }
      });
    },
  );
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as { port: number }).port,
    get connections() {
      return state.connections;
    },
    get requests() {
      return state.requests;
    },
    close() {
      for (const s of sockets) s.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** The operation of a decoded request. */
function operationOf(request: TtlvItem): number {
  return requireChild(requireChild(request, Tag.BatchItem, 'Structure'), Tag.Operation, 'Enumeration').value;
}

/** Build a response message with one batch item. */
function responseBytes(operation: number, status: number, payload?: (w: TtlvWriter) => void, failure?: { reason: number; message: string }): Buffer {
  const w = new TtlvWriter();
  w.begin(Tag.ResponseMessage);
  w.struct(Tag.ResponseHeader, (h) => {
    h.struct(Tag.ProtocolVersion, (p) => p.integer(Tag.ProtocolVersionMajor, 1).integer(Tag.ProtocolVersionMinor, 2));
    h.dateTime(Tag.TimeStamp, BigInt(Math.floor(Date.now() / 1000)));
    h.integer(Tag.BatchCount, 1);
  });
  w.struct(Tag.BatchItem, (b) => {
    b.enumeration(Tag.Operation, operation);
    b.enumeration(Tag.ResultStatus, status);
    if (failure) b.enumeration(Tag.ResultReason, failure.reason).textString(Tag.ResultMessage, failure.message);
    if (payload) b.struct(Tag.ResponsePayload, payload);
  });
  w.end();
  return w.finish();
}

function getPayload(keyFormat: number, material: Buffer, opts: { wrapped?: boolean; lengthBits?: number } = {}): (w: TtlvWriter) => void {
  return (w) => {
    w.enumeration(Tag.ObjectType, ObjectType.SymmetricKey);
    w.textString(Tag.UniqueIdentifier, 'k1');
    w.struct(Tag.SymmetricKey, (s) =>
      s.struct(Tag.KeyBlock, (kb) => {
        kb.enumeration(Tag.KeyFormatType, keyFormat);
        kb.struct(Tag.KeyValue, (kv) => {
          if (keyFormat === KeyFormatType.TransparentSymmetricKey) kv.struct(Tag.KeyMaterial, (m) => m.byteString(Tag.Key, material));
          else kv.byteString(Tag.KeyMaterial, material);
        });
        kb.enumeration(Tag.CryptographicAlgorithm, 3);
        kb.integer(Tag.CryptographicLength, opts.lengthBits ?? material.length * 8);
        if (opts.wrapped) kb.struct(Tag.KeyWrappingData, (d) => d.enumeration(0x42009e, 1));
      }),
    );
  };
}

function client(ports: number[], extra: Partial<ConstructorParameters<typeof KmipClient>[0]> = {}): KmipClient {
  return new KmipClient({
    endpoints: ports.map((port) => ({ host: '127.0.0.1', port })),
    ca: pki.ca,
    cert: pki.client.cert,
    key: pki.client.key,
    timeoutMs: 1000,
    ...extra,
  });
}

async function failure(promise: Promise<unknown>): Promise<KmipError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(KmipError);
    return err as KmipError;
  }
  throw new Error('expected a rejection');
}

describe('bad answers become typed errors', () => {
  it('nothing listening → ERR_KMS_UNAVAILABLE with one message shape', async () => {
    const net = await import('node:net');
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, '127.0.0.1', () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise((r) => probe.close(r));
    const c = client([port]);
    try {
      const err = await failure(c.query());
      expect(err.code).toBe('ERR_KMS_UNAVAILABLE');
      expect(err.message).toBe(
        `KMIP Query: no KMS node answered (1 tried): could not connect to 127.0.0.1:${port}: connect ECONNREFUSED 127.0.0.1:${port} [ERR_KMIP_CONNECT]`,
      );
    } finally {
      await c.close();
    }
  });

  it('garbage bytes → ERR_KMIP_TTLV for that node (ERR_KMS_UNAVAILABLE overall)', async () => {
    const kms = await fakeKms((_req, socket) => socket.write(Buffer.from('HTTP/1.1 400 Bad Request\r\n\r\n')));
    const c = client([kms.port]);
    try {
      const err = await failure(c.query());
      expect(err.code).toBe('ERR_KMS_UNAVAILABLE');
      expect(err.failures).toEqual([
        { endpoint: `127.0.0.1:${kms.port}`, code: 'ERR_KMIP_TTLV', message: expect.stringMatching(/expected message tag ResponseMessage/) },
      ]);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('an oversized announced length fails at once, without waiting for or allocating the body', async () => {
    const kms = await fakeKms((_req, socket) => socket.write(Buffer.from('42007b01fffffff8', 'hex')));
    const c = client([kms.port], { timeoutMs: 20_000 });
    try {
      const err = await failure(c.query());
      expect(err.failures![0]).toMatchObject({ code: 'ERR_KMIP_TTLV' });
      expect(err.failures![0]!.message).toMatch(/announces 4294967296 bytes, more than the maximum of 1048576/);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a body that is not well-formed TTLV → ERR_KMIP_TTLV', async () => {
    // header OK, but the inner item claims more bytes than the message holds
    const kms = await fakeKms((_req, socket) => socket.write(Buffer.from('42007b0100000010' + '42007a0100000100' + '0000000000000000', 'hex')));
    const c = client([kms.port]);
    try {
      const err = await failure(c.query());
      expect(err.failures![0]).toMatchObject({ code: 'ERR_KMIP_TTLV' });
      expect(err.failures![0]!.message).toMatch(/declares 256 value bytes but only 8 remain/);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('well-formed TTLV that is not a valid response → ERR_KMIP_PROTOCOL', async () => {
    const kms = await fakeKms((_req, socket) => socket.write(new TtlvWriter().struct(Tag.ResponseMessage, (w) => w.integer(Tag.BatchCount, 1)).finish()));
    const c = client([kms.port]);
    try {
      const err = await failure(c.query());
      expect(err.failures![0]).toMatchObject({ code: 'ERR_KMIP_PROTOCOL' });
      expect(err.failures![0]!.message).toMatch(/ResponseMessage is missing ResponseHeader/);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a server that never answers → ERR_KMIP_TIMEOUT after timeoutMs, not a hang', async () => {
    const kms = await fakeKms(() => undefined);
    const c = client([kms.port], { timeoutMs: 300 });
    try {
      const err = await failure(c.query());
      expect(err.code).toBe('ERR_KMS_UNAVAILABLE');
      expect(err.failures![0]).toMatchObject({ code: 'ERR_KMIP_TIMEOUT', message: `127.0.0.1:${kms.port} did not answer within 300 ms` });
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a server that stops in the middle of an answer → ERR_KMIP_TIMEOUT; one that closes mid-answer → ERR_KMIP_CLOSED', async () => {
    const half = sampleGetResponse.subarray(0, 100);
    const stall = await fakeKms((_req, socket) => socket.write(half));
    const cut = await fakeKms((_req, socket) => socket.end(half));
    const c1 = client([stall.port], { timeoutMs: 300 });
    const c2 = client([cut.port]);
    try {
      expect((await failure(c1.getSymmetricKey('1'))).failures![0]).toMatchObject({ code: 'ERR_KMIP_TIMEOUT' });
      expect((await failure(c2.getSymmetricKey('1'))).failures![0]).toMatchObject({ code: 'ERR_KMIP_CLOSED' });
    } finally {
      await c1.close();
      await c2.close();
      await stall.close();
      await cut.close();
    }
  });

  it('bytes beyond the announced response → ERR_KMIP_PROTOCOL', async () => {
    const kms = await fakeKms((_req, socket) => socket.write(Buffer.concat([sampleGetResponse, Buffer.alloc(8)])));
    const c = client([kms.port]);
    try {
      expect((await failure(c.getSymmetricKey('1'))).failures![0]).toMatchObject({
        code: 'ERR_KMIP_PROTOCOL',
        message: expect.stringMatching(/8 bytes beyond the 280-byte response/),
      });
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a response carrying a 256 KiB Big Integer → ERR_KMIP_TTLV, not a stall past the request timeout', async () => {
    // The writer refuses such a value, so the payload carries a 256 KiB Byte String under an
    // extension tag whose type byte is then patched to Big Integer (0x04); 262 144 is a multiple
    // of 8, so the item is otherwise well-formed.
    const hugeTag = 0x540001;
    const message = responseBytes(Operation.Query, ResultStatus.Success, (w) => w.byteString(hugeTag, Buffer.alloc(256 * 1024, 0x7f)));
    const at = message.indexOf(Buffer.from('5400010800040000', 'hex'));
    expect(at).toBeGreaterThan(0);
    message[at + 3] = 0x04;
    const kms = await fakeKms((_req, socket) => socket.write(message));
    const timeoutMs = 5000;
    const c = client([kms.port], { timeoutMs });
    try {
      const started = Date.now();
      const err = await failure(c.query());
      expect(err.code).toBe('ERR_KMS_UNAVAILABLE');
      expect(err.failures![0]).toMatchObject({ code: 'ERR_KMIP_TTLV', message: expect.stringMatching(/declares 262144 bytes, more than the maximum of 512/) });
      expect(Date.now() - started).toBeLessThan(timeoutMs);
    } finally {
      await c.close();
      await kms.close();
    }
  }, 20_000);

  it('a TCP listener that never starts TLS → ERR_KMIP_TIMEOUT during the handshake', async () => {
    const kms = await fakeKms(() => undefined);
    const net = await import('node:net');
    const silent = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const port = (silent.address() as { port: number }).port;
    const c = client([port], { timeoutMs: 300 });
    try {
      expect((await failure(c.query())).failures![0]).toMatchObject({
        code: 'ERR_KMIP_TIMEOUT',
        message: `127.0.0.1:${port} did not complete the TLS handshake within 300 ms`,
      });
    } finally {
      await c.close();
      silent.close();
      await kms.close();
    }
  });
});

describe('framing and connection handling', () => {
  it('fuzz: whatever bytes a server sends before closing, the client ends with a typed error (fast-check, fixed seed)', async () => {
    let next: Buffer = Buffer.alloc(0);
    const kms = await fakeKms((_req, socket) => socket.end(next));
    const c = client([kms.port], { timeoutMs: 2000 });
    const header = fc.constantFrom('42007b01', '42007b02', '42007801', '00000000');
    const bytes = fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((u) => Buffer.from(u)),
      fc
        .tuple(header, fc.nat({ max: 96 }), fc.uint8Array({ maxLength: 96 }))
        .map(([h, len, body]) => Buffer.concat([Buffer.from(h, 'hex'), Buffer.from([0, 0, 0, len]), Buffer.from(body)])),
      // a real response with one byte changed
      fc.tuple(fc.nat({ max: sampleGetResponse.length - 1 }), fc.integer({ min: 0, max: 255 })).map(([at, v]) => {
        const b = Buffer.from(sampleGetResponse);
        b[at] = v;
        return b;
      }),
    );
    try {
      await fc.assert(
        fc.asyncProperty(bytes, async (answer) => {
          next = answer;
          try {
            await c.getSymmetricKey('1');
          } catch (err) {
            expect(err).toBeInstanceOf(KmipError);
            expect(['ERR_KMS_UNAVAILABLE', 'ERR_KMIP_PROTOCOL', 'ERR_KMIP_KEY', 'ERR_KMIP_OPERATION_FAILED']).toContain((err as KmipError).code);
          }
        }),
        fuzzParams(2024, 60),
      );
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('parses a response however it is split across TCP segments (every split offset)', async () => {
    let split = 1;
    const kms = await fakeKms((_req, socket) => {
      const at = split++;
      socket.write(sampleGetResponse.subarray(0, at));
      setTimeout(() => socket.write(sampleGetResponse.subarray(at)), 1);
    });
    const c = client([kms.port]);
    try {
      for (let at = 1; at < sampleGetResponse.length; at++) {
        const key = await c.getSymmetricKey('1');
        expect(key.material.toString('hex')).toBe('92f16df0020f3b47fb024e5696124270aef677ac6fbd677f6f0d6aed8e2b4442');
      }
      expect(kms.connections).toBe(1);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a server that closes idle connections: the next request opens a new one, without an error', async () => {
    const kms = await fakeKms((req, socket) => {
      socket.write(responseBytes(operationOf(req), ResultStatus.Success, (w) => w.textString(Tag.UniqueIdentifier, 'x')));
      setTimeout(() => socket.end(), 30);
    });
    const c = client([kms.port]);
    try {
      await c.activate('x');
      await new Promise((r) => setTimeout(r, 150));
      await c.activate('x');
      expect(kms.connections).toBe(2);
      expect(c.stats.connectionsOpened).toBe(2);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a connection idle for longer than idleTimeoutMs is replaced rather than reused', async () => {
    const kms = await fakeKms((req, socket) =>
      socket.write(responseBytes(operationOf(req), ResultStatus.Success, (w) => w.textString(Tag.UniqueIdentifier, 'x'))),
    );
    const c = client([kms.port], { idleTimeoutMs: 50 });
    try {
      await c.activate('x');
      await c.activate('x');
      expect(kms.connections).toBe(1);
      await new Promise((r) => setTimeout(r, 120));
      await c.activate('x');
      expect(kms.connections).toBe(2);
      expect(c.stats.connectionsOpened).toBe(2);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('unsolicited bytes on an idle connection drop it; the next request reconnects', async () => {
    const kms = await fakeKms((req, socket) => {
      socket.write(responseBytes(operationOf(req), ResultStatus.Success, (w) => w.textString(Tag.UniqueIdentifier, 'x')));
      setTimeout(() => socket.write(Buffer.alloc(16, 1)), 20);
    });
    const c = client([kms.port]);
    try {
      await c.activate('x');
      await new Promise((r) => setTimeout(r, 100));
      await c.activate('x');
      expect(kms.connections).toBe(2);
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('a KMIP failure answer is final: the next node is not tried', async () => {
    const failing = await fakeKms((req, socket) =>
      socket.write(responseBytes(operationOf(req), ResultStatus.OperationFailed, undefined, { reason: ResultReason.PermissionDenied, message: 'not yours' })),
    );
    const other = await fakeKms(() => undefined);
    const c = client([failing.port, other.port]);
    try {
      const err = await failure(c.getSymmetricKey('7'));
      expect(err).toMatchObject({
        code: 'ERR_KMIP_OPERATION_FAILED',
        resultStatus: 'OperationFailed',
        resultReason: 'PermissionDenied',
        resultMessage: 'not yours',
        operation: 'Get',
      });
      expect(other.connections).toBe(0);
    } finally {
      await c.close();
      await failing.close();
      await other.close();
    }
  });

  it('a broken first node is skipped and the working node is preferred afterwards', async () => {
    const broken = await fakeKms((_req, socket) => socket.write(Buffer.from('nonsense!nonsense!')));
    const good = await fakeKms((req, socket) =>
      socket.write(responseBytes(operationOf(req), ResultStatus.Success, (w) => w.textString(Tag.UniqueIdentifier, 'x'))),
    );
    const c = client([broken.port, good.port]);
    try {
      await c.activate('x');
      await c.activate('x');
      await c.activate('x');
      expect(broken.requests).toBe(1);
      expect(good.requests).toBe(3);
    } finally {
      await c.close();
      await broken.close();
      await good.close();
    }
  });

  it('many concurrent requests to a hanging node, with a pool of one connection, all end with typed errors', async () => {
    const kms = await fakeKms(() => undefined);
    const c = client([kms.port], { timeoutMs: 200, maxConnectionsPerNode: 1 });
    try {
      const results = await Promise.allSettled(Array.from({ length: 5 }, () => c.query()));
      for (const r of results) {
        expect(r.status).toBe('rejected');
        const err = (r as PromiseRejectedResult).reason as KmipError;
        expect(err).toBeInstanceOf(KmipError);
        expect(err.code).toBe('ERR_KMS_UNAVAILABLE');
        expect(err.failures![0]!.code).toBe('ERR_KMIP_TIMEOUT');
      }
    } finally {
      await c.close();
      await kms.close();
    }
  });

  it('close() during a request in flight ends it with ERR_KMIP_CLOSED', async () => {
    const kms = await fakeKms(() => undefined);
    const c = client([kms.port], { timeoutMs: 10_000 });
    try {
      const pending = c.query();
      await new Promise((r) => setTimeout(r, 100));
      await c.close();
      expect((await failure(pending)).code).toBe('ERR_KMIP_CLOSED');
    } finally {
      await kms.close();
    }
  });
});

describe('what getKey accepts as a KEK', () => {
  const key32 = Buffer.alloc(32, 0xab);
  const answer = (payload: (w: TtlvWriter) => void) => async (): Promise<{ kms: FakeKms; p: KmipKeyProvider }> => {
    const kms = await fakeKms((req, socket) => socket.write(responseBytes(operationOf(req), ResultStatus.Success, payload)));
    // allowRetired: this fake answers every request with the same Get payload, so getKey's State
    // check (a Get Attributes) is skipped; what is tested here is what Get may return.
    const p = new KmipKeyProvider({
      id: 'fake',
      endpoints: [{ host: '127.0.0.1', port: kms.port }],
      ca: pki.ca,
      cert: pki.client.cert,
      key: pki.client.key,
      timeoutMs: 1000,
      allowRetired: true,
    });
    return { kms, p };
  };

  it('Raw and Transparent Symmetric Key formats', async () => {
    for (const format of [KeyFormatType.Raw, KeyFormatType.TransparentSymmetricKey]) {
      const { kms, p } = await answer(getPayload(format, key32))();
      try {
        expect((await p.getKey('k1')).equals(key32)).toBe(true);
      } finally {
        await p.close();
        await kms.close();
      }
    }
  });

  it('refuses a 128-bit key, a wrapped key, an opaque key and a non-key object (ERR_KMIP_KEY)', async () => {
    const cases: Array<[(w: TtlvWriter) => void, RegExp]> = [
      [getPayload(KeyFormatType.Raw, Buffer.alloc(16, 1)), /is not an AES-256 key \(Cryptographic Length 128, 16 bytes of key material\)/],
      [getPayload(KeyFormatType.Raw, key32, { wrapped: true }), /returned wrapped/],
      [getPayload(KeyFormatType.Opaque, key32), /Key Format Type Opaque/],
      [(w) => w.enumeration(Tag.ObjectType, ObjectType.SecretData).textString(Tag.UniqueIdentifier, 'k1'), /is a SecretData, not a SymmetricKey/],
    ];
    for (const [payload, message] of cases) {
      const { kms, p } = await answer(payload)();
      try {
        const err = await failure(p.getKey('k1'));
        expect(err.code).toBe('ERR_KMIP_KEY');
        expect(err.message).toMatch(message);
        expect(err.message).not.toMatch(/abab|0101/);
      } finally {
        await p.close();
        await kms.close();
      }
    }
  });

  it('a response to a different operation is refused', async () => {
    const kms = await fakeKms((_req, socket) =>
      socket.write(responseBytes(Operation.Activate, ResultStatus.Success, (w) => w.textString(Tag.UniqueIdentifier, 'k1'))),
    );
    const c = client([kms.port]);
    try {
      const err = await failure(c.getSymmetricKey('k1'));
      expect(err).toMatchObject({ code: 'ERR_KMIP_PROTOCOL', message: 'expected a response to Get but received one to Activate' });
    } finally {
      await c.close();
      await kms.close();
    }
  });
});
