// A fuzzer of handshakes and requests: valid sessions with bytes flipped, cut short or padded with
// garbage, over many connections at once. Whatever they send, the server answers or closes that
// connection, and afterwards still serves a good client, reports its exports and closes cleanly.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { join } from 'node:path';
import { mkdirSync } from 'node:fs';
import type { NbdHost } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { fuzzParams } from '../helpers/fuzz.js';
import { encryptedDisk, random, startHost } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let host: NbdHost;
let socket: string;
const content = random(2 * MiB);

beforeAll(async () => {
  tmp = tempDir('vmseal-serve-fuzz-');
  const dir = join(tmp.dir, 'd');
  mkdirSync(dir);
  const disk = await encryptedDisk(dir, 'f', { subformat: 'monolithicSparse', capacity: 2 * MiB, content });
  ({ host, socket } = await startHost(dir, [{ path: disk, readOnly: true }]));
});
afterAll(async () => {
  await host?.close();
  tmp?.cleanup();
});

/** A well-formed session: flags, STRUCTURED_REPLY, SET_META_CONTEXT, GO, a few requests, DISC. */
function session(reqs: Array<[number, number, number, number]>): Buffer {
  const opt = (o: number, data: Buffer): Buffer => {
    const h = Buffer.alloc(16);
    h.write('IHAVEOPT', 0, 'ascii');
    h.writeUInt32BE(o, 8);
    h.writeUInt32BE(data.length, 12);
    return Buffer.concat([h, data]);
  };
  const parts = [
    Buffer.from([0, 0, 0, 3]),
    opt(8, Buffer.alloc(0)),
    opt(10, RawClient.metaData('f', ['base:allocation'])),
    opt(7, RawClient.nameData('f', [3])),
  ];
  for (const [type, flags, offset, length] of reqs) {
    const r = Buffer.alloc(28);
    r.writeUInt32BE(0x25609513, 0);
    r.writeUInt16BE(flags, 4);
    r.writeUInt16BE(type, 6);
    r.writeBigUInt64BE(BigInt(offset), 16);
    r.writeUInt32BE(length, 24);
    parts.push(r);
  }
  const disc = Buffer.alloc(28);
  disc.writeUInt32BE(0x25609513, 0);
  disc.writeUInt16BE(CMD.DISC, 6);
  parts.push(disc);
  return Buffer.concat(parts);
}

/** Send `bytes`, read whatever comes back until the server closes or a short idle period passes. */
async function play(bytes: Buffer): Promise<void> {
  const c = await RawClient.connect(socket);
  c.socket.on('data', () => undefined);
  c.socket.write(bytes);
  c.socket.end();
  await c.closedByServer();
}

describe('fuzzed clients', () => {
  it('never break the server', async () => {
    const request = fc.tuple(
      fc.integer({ min: 0, max: 9 }),
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0, max: 4 * MiB }),
      fc.integer({ min: 0, max: 2 * MiB }),
    );
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('junk' as const), at: fc.nat(), junk: fc.uint8Array({ minLength: 1, maxLength: 64 }) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(request, { maxLength: 6 }), fc.array(mutation, { maxLength: 3 }), async (reqs, mutations) => {
        let bytes = session(reqs);
        for (const m of mutations) {
          const at = m.at % (bytes.length + 1);
          if (m.kind === 'flip' && at < bytes.length) bytes[at] = m.value;
          else if (m.kind === 'cut') bytes = bytes.subarray(0, at);
          else if (m.kind === 'junk') bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(m.junk), bytes.subarray(at)]);
        }
        await play(bytes);
      }),
      fuzzParams(0x5e7e, 150),
    );
    // The server is still whole: a good client reads the right data, the export has no client left.
    const c = await RawClient.connect(socket);
    try {
      await c.go('f', { structured: true });
      const r = await c.request(CMD.READ, 4096, 65536);
      expect(r.error).toBe(0);
      expect(r.data.equals(content.subarray(4096, 4096 + 65536))).toBe(true);
    } finally {
      c.close();
    }
    await c.closedByServer();
    expect(host.exports()[0].bytesRead).toBeGreaterThanOrEqual(65536);
  });
});
