// KmipKeyProvider and KmipClient against a real PyKMIP server (one shared server for this file).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { KmipClient, KmipError, KmipKeyProvider } from '../../src/kmip/index.js';
import { KmipConnection } from '../../src/kmip/connection.js';
import { DEFAULT_IDLE_TIMEOUT_MS } from '../../src/kmip/options.js';
import { encodeRequest, queryPayload } from '../../src/kmip/messages.js';
import { Operation } from '../../src/kmip/tags.js';
import { startTcpProxy } from './tcp-proxy.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';

let kms: PyKmip;
const providers: KmipKeyProvider[] = [];
function provider(extra: Partial<ConstructorParameters<typeof KmipKeyProvider>[0]> = {}): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('pykmip-test'), timeoutMs: 5000, ...extra });
  providers.push(p);
  return p;
}

async function rejection(promise: Promise<unknown>): Promise<KmipError> {
  try {
    await promise;
  } catch (err) {
    expect(err).toBeInstanceOf(KmipError);
    return err as KmipError;
  }
  throw new Error('expected the promise to reject');
}

// The idle-session test ('connections' below) needs a pooled connection left idle past PyKMIP's 10 s
// read timeout. Its idle time starts here and runs while the other tests do: the test waits out only
// what is left of it, not 10 s of its own.
const IDLE_MS = 10_500;
let idle: { p: KmipKeyProvider; keyId: string; key: Buffer; since: number };

beforeAll(async () => {
  kms = await startPyKmip();
  const p = provider();
  const ref = await p.createKey();
  idle = { p, keyId: ref.keyId, key: await p.getKey(ref.keyId), since: Date.now() };
});

afterAll(async () => {
  for (const p of providers) await p.close();
  await kms?.stop();
});

describe('KMIP operations against PyKMIP', () => {
  it('Discover Versions and Query', async () => {
    const p = provider();
    const versions = await p.discoverVersions();
    expect(versions).toContainEqual({ major: 1, minor: 1 });
    expect(versions).toContainEqual({ major: 2, minor: 0 });
    const q = await p.query();
    expect(q.vendorIdentification).toMatch(/PyKMIP/);
    for (const op of ['Create', 'Get', 'Locate', 'GetAttributes', 'Activate', 'Revoke', 'Destroy']) expect(q.operations).toContain(op);
  });

  it('createKey = Create + Activate; getKey returns the same 32 bytes each time; locate finds it by name', async () => {
    const p = provider();
    const name = `kek-${Date.now()}-a`;
    const ref = await p.createKey({ name });
    expect(ref.providerId).toBe('pykmip-test');
    expect(ref.keyId).toMatch(/^\d+$/);
    expect(await p.getState(ref.keyId)).toBe('Active');
    const k1 = await p.getKey(ref.keyId);
    const k2 = await p.getKey(ref.keyId);
    expect(k1).toHaveLength(32);
    expect(k1.equals(k2)).toBe(true);
    expect(k1.equals(Buffer.alloc(32))).toBe(false);
    expect(await p.locate(name)).toEqual([ref.keyId]);
    expect(await p.locate(`${name}-nothing`)).toEqual([]);
    // Names need not be unique: a second key with the same name is found too.
    const ref2 = await p.createKey({ name });
    expect((await p.locate(name)).sort()).toEqual([ref.keyId, ref2.keyId].sort());
    expect((await p.getKey(ref2.keyId)).equals(k1)).toBe(false);
    await p.destroyKey(ref2.keyId);
    await p.destroyKey(ref.keyId);
  });

  it('destroyKey = Revoke + Destroy; afterwards Get fails with ItemNotFound', async () => {
    const p = provider();
    const ref = await p.createKey();
    await p.destroyKey(ref.keyId);
    // getKey asks for the State first: that is what fails.
    expect(await rejection(p.getKey(ref.keyId))).toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED', operation: 'GetAttributes', resultReason: 'ItemNotFound' });
    const err = await rejection(p.client.getSymmetricKey(ref.keyId));
    expect(err).toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED', operation: 'Get', resultStatus: 'OperationFailed', resultReason: 'ItemNotFound' });
    expect(err.resultMessage).toContain(ref.keyId);
    expect(err.message).toMatch(/^KMIP Get failed on 127\.0\.0\.1:\d+: OperationFailed\/ItemNotFound: /);
    expect(await p.locate('never-made')).toEqual([]);
  });

  it('Revoke alone deactivates (Get still returns the material, getKey refuses it); destroyKey of an unknown id fails clearly', async () => {
    const p = provider();
    const ref = await p.createKey();
    const before = await p.getKey(ref.keyId);
    await p.client.revoke(ref.keyId);
    expect(await p.getState(ref.keyId)).toBe('Deactivated');
    expect((await p.client.getSymmetricKey(ref.keyId)).material.equals(before)).toBe(true);
    await expect(p.getKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED' });
    await p.destroyKey(ref.keyId); // Revoke of a deactivated key fails, Destroy still runs
    await expect(p.getState(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED', resultReason: 'ItemNotFound' });
    await expect(p.destroyKey('999999')).rejects.toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED', resultReason: 'ItemNotFound' });
  });

  it('a Pre-Active key (Create without Activate) can be destroyed', async () => {
    const p = provider();
    const id = await p.client.create({ usageMask: 12, name: 'preactive' });
    expect(await p.getState(id)).toBe('PreActive');
    await p.destroyKey(id);
    await expect(p.getKey(id)).rejects.toMatchObject({ resultReason: 'ItemNotFound' });
  });

  for (const version of ['1.0', '1.1', '1.4', '2.0']) {
    it(`speaks KMIP ${version}: create, get, state, locate, destroy`, async () => {
      const p = provider({ protocolVersion: version });
      const name = `kek-v${version}-${Date.now()}`;
      const ref = await p.createKey({ name });
      expect(await p.getState(ref.keyId)).toBe('Active');
      expect(await p.getKey(ref.keyId)).toHaveLength(32);
      expect(await p.locate(name)).toEqual([ref.keyId]);
      await p.destroyKey(ref.keyId);
    });
  }

  it('sends a username/password credential (PyKMIP ignores it; the request must still succeed)', async () => {
    const p = provider({ username: 'vmseal', password: 'not-checked-by-pykmip' });
    const ref = await p.createKey();
    expect(await p.getKey(ref.keyId)).toHaveLength(32);
    await p.destroyKey(ref.keyId);
  });

  it('refuses bad arguments with typed errors, before any request', async () => {
    const p = provider();
    await expect(p.getKey('')).rejects.toThrow(
      'Expected a non-empty KMIP Unique Identifier string without control characters (at most 1024 characters) for keyId but received a string of length 0',
    );
    await expect(p.getKey(42 as unknown as string)).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(p.createKey({ name: '' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});

describe('identities and TLS', () => {
  it('a second identity (another CN) cannot read, locate or destroy the first one’s keys', async () => {
    const owner = provider();
    const name = `owned-${Date.now()}`;
    const ref = await owner.createKey({ name });
    const other = await kms.makeClient('vmseal-other-tenant');
    const intruder = provider({ cert: other.cert, key: other.key });
    // PyKMIP answers Permission Denied for another owner's object
    await expect(intruder.getKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED', resultReason: 'PermissionDenied' });
    await expect(intruder.getState(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED' });
    expect(await intruder.locate(name)).toEqual([]);
    await expect(intruder.destroyKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED' });
    // the intruder's own key works, and the owner's key is untouched
    const own = await intruder.createKey({ name });
    expect(await intruder.locate(name)).toEqual([own.keyId]);
    expect(await owner.getKey(ref.keyId)).toHaveLength(32);
    await intruder.destroyKey(own.keyId);
    await owner.destroyKey(ref.keyId);
  });

  it('a client certificate from another CA is refused: ERR_KMIP_TLS naming the node', async () => {
    const foreign = await kms.makeOtherCaClient();
    const p = provider({ cert: foreign.cert, key: foreign.key });
    const err = await rejection(p.getKey('1'));
    expect(err.code).toBe('ERR_KMIP_TLS');
    expect(err.failures).toHaveLength(1);
    expect(err.failures![0]).toMatchObject({ endpoint: `127.0.0.1:${kms.endpoints[0]!.port}`, code: 'ERR_KMIP_TLS' });
    expect(err.message).toContain(`127.0.0.1:${kms.endpoints[0]!.port}`);
  });

  it('a server certificate from an untrusted CA is refused', async () => {
    const foreign = await kms.makeOtherCaClient();
    const p = provider({ ca: foreign.ca });
    const err = await rejection(p.query());
    expect(err.code).toBe('ERR_KMIP_TLS');
    expect(err.failures![0]!.message).toMatch(/certificate/i);
  });

  it('the server name is checked against the certificate', async () => {
    const p = provider({ endpoints: [{ ...kms.endpoints[0]!, servername: 'kms.example.com' }] });
    const err = await rejection(p.query());
    expect(err.code).toBe('ERR_KMIP_TLS');
    expect(err.failures![0]!.message).toMatch(/kms\.example\.com/);
    // "localhost" is in the certificate's SAN: connecting by IP but checking that name works
    const ok = provider({ endpoints: [{ ...kms.endpoints[0]!, servername: 'localhost' }] });
    expect((await ok.query()).operations).toContain('Get');
  });

  it('a certificate without the clientAuth usage is refused: by TLS (other usage) or by KMIP (no usage extension)', async () => {
    const serverOnly = await kms.makeClient('vmseal-server-usage', { extendedKeyUsage: 'serverAuth' });
    const tlsErr = await rejection(provider({ cert: serverOnly.cert, key: serverOnly.key }).query());
    expect(tlsErr.code).toBe('ERR_KMIP_TLS');
    const noEku = await kms.makeClient('vmseal-no-usage', { extendedKeyUsage: 'none' });
    const err = await rejection(provider({ cert: noEku.cert, key: noEku.key }).query());
    expect(err.code).toBe('ERR_KMIP_OPERATION_FAILED');
    expect(err.resultReason).toBe('AuthenticationNotSuccessful');
  });

  it('accepts ca, cert and key as Buffers', async () => {
    const p = provider({ ca: Buffer.from(kms.ca), cert: Buffer.from(kms.clientCert), key: Buffer.from(kms.clientKey) });
    expect((await p.query()).operations).toContain('Get');
  });

  it('no client certificate: the handshake is refused (ERR_KMIP_TLS)', async () => {
    const err = await rejection(
      (async () => {
        const conn = await KmipConnection.connect({ ...kms.endpoints[0]!, ca: kms.ca, timeoutMs: 5000, maxMessageSize: 1 << 20 });
        try {
          await conn.request(encodeRequest(Operation.Query, { version: { major: 1, minor: 2 } }, queryPayload()), 5000);
        } finally {
          conn.close();
        }
      })(),
    );
    expect(['ERR_KMIP_TLS', 'ERR_KMIP_CLOSED']).toContain(err.code);
    expect(err.code).toBe('ERR_KMIP_TLS');
  });

  it('PEM options are checked: a path instead of PEM text is a clear error', () => {
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), ca: '/etc/ssl/ca.pem' })).toThrow(
      'Expected PEM text (a string or Buffer containing "-----BEGIN") for ca but received a string of length 15 (pass the PEM file’s contents, not its path)',
    );
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), key: Buffer.from('nope') })).toThrow(/for key but received Buffer of length 4/);
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), endpoints: [] })).toThrow(
      'Expected a non-empty array of { host, port } for endpoints but received an array of length 0',
    );
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), protocolVersion: '3.0' })).toThrow(/for protocolVersion/);
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), id: 'a/b' })).toThrow(/for id/);
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), timeoutMs: 0 })).toThrow(/for timeoutMs but received 0 of type number/);
    // PEM-looking but broken, and a key that does not belong to the certificate: refused at construction
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), cert: '-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n' })).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/^Could not load the TLS identity from ca, cert and key: /) }),
    );
    const serverKey = readFileSync(path.join(kms.dir, 'certs', 'server.key'), 'utf8');
    expect(() => new KmipKeyProvider({ ...kms.providerOptions(), key: serverKey })).toThrow(/Could not load the TLS identity .*mismatch/);
  });
});

describe('connections', () => {
  it('100 getKeys (State check + Get each) use one TLS connection (counted by the client and by a TCP proxy in front)', async () => {
    const proxy = await startTcpProxy(kms.endpoints[0]!);
    try {
      const p = provider({ endpoints: [{ host: '127.0.0.1', port: proxy.port }] });
      const ref = await p.createKey();
      const first = await p.getKey(ref.keyId);
      for (let i = 0; i < 99; i++) {
        const k = await p.getKey(ref.keyId);
        expect(k.equals(first)).toBe(true);
      }
      expect(proxy.accepted).toBe(1);
      expect(p.stats.connectionsOpened).toBe(1);
      expect(p.stats.requestsAnswered).toBe(202); // Create, Activate, then Get Attributes + Get per getKey
      await p.destroyKey(ref.keyId);
      await p.close();
      await expect(p.getKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KMIP_CLOSED' });
    } finally {
      await proxy.close();
    }
  });

  it('concurrent requests use at most maxConnectionsPerNode connections', async () => {
    const proxy = await startTcpProxy(kms.endpoints[0]!);
    try {
      const p = provider({ endpoints: [{ host: '127.0.0.1', port: proxy.port }], maxConnectionsPerNode: 2 });
      const ref = await p.createKey();
      const keys = await Promise.all(Array.from({ length: 20 }, () => p.getKey(ref.keyId)));
      for (const k of keys) expect(k.equals(keys[0]!)).toBe(true);
      expect(proxy.accepted).toBeLessThanOrEqual(2);
      await p.destroyKey(ref.keyId);
    } finally {
      await proxy.close();
    }
  });

  it('reconnects transparently when the server side drops idle connections', async () => {
    const proxy = await startTcpProxy(kms.endpoints[0]!);
    try {
      const p = provider({ endpoints: [{ host: '127.0.0.1', port: proxy.port }] });
      const ref = await p.createKey();
      const k = await p.getKey(ref.keyId);
      proxy.dropAll();
      await new Promise((r) => setTimeout(r, 50));
      expect((await p.getKey(ref.keyId)).equals(k)).toBe(true);
      expect(proxy.accepted).toBe(2);
      await p.destroyKey(ref.keyId);
    } finally {
      await proxy.close();
    }
  });

  it('a request sent on a connection the server has just dropped is resent once on a new one', async () => {
    const proxy = await startTcpProxy(kms.endpoints[0]!);
    try {
      const p = provider({ endpoints: [{ host: '127.0.0.1', port: proxy.port }] });
      const ref = await p.createKey();
      const k = await p.getKey(ref.keyId);
      // No pause: the client has not yet seen the close when it writes the request, so the request
      // dies without an answer and must be resent on a fresh connection.
      proxy.dropAll();
      expect((await p.getKey(ref.keyId)).equals(k)).toBe(true);
      expect(p.stats.staleRetries).toBe(1);
      expect(proxy.accepted).toBe(2);
      await p.destroyKey(ref.keyId);
    } finally {
      await proxy.close();
    }
  });

  it('PyKMIP 0.10 keeps an idle session open past its 10 s read timeout; the pooled connection stays usable', async () => {
    let { p, keyId, key, since } = idle;
    // On a machine so loaded that the client's own idle limit (60 s) came near, it would have closed
    // the connection itself: idle a fresh one for the whole time instead.
    if (Date.now() - since > DEFAULT_IDLE_TIMEOUT_MS - 15_000) {
      p = provider();
      keyId = (await p.createKey()).keyId;
      key = await p.getKey(keyId);
      since = Date.now();
    }
    const left = since + IDLE_MS - Date.now();
    if (left > 0) await new Promise((r) => setTimeout(r, left));
    expect((await p.getKey(keyId)).equals(key)).toBe(true);
    expect(p.stats.connectionsOpened).toBe(1);
    await p.destroyKey(keyId);
  }, 30_000);
});

describe('the client directly', () => {
  it('KmipClient exposes the operations', async () => {
    const c = new KmipClient({ endpoints: kms.endpoints, ca: kms.ca, cert: kms.clientCert, key: kms.clientKey });
    try {
      const id = await c.create({ usageMask: 12, name: 'direct' });
      await c.activate(id);
      const key = await c.getSymmetricKey(id);
      expect(key).toMatchObject({ uniqueIdentifier: id, keyFormatType: 'Raw', algorithm: 'AES', lengthBits: 256 });
      await c.revoke(id);
      await c.destroy(id);
    } finally {
      await c.close();
    }
  });
});
