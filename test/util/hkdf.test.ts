import { hkdfSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hkdfSha256 } from '../../src/util/hkdf.js';

interface Vector {
  name: string;
  ikm: string;
  salt: string;
  info: string;
  length: number;
  okm: string;
}
const { vectors } = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'fixtures', 'rfc5869-sha256.json'), 'utf8')) as { vectors: Vector[] };
const hex = (s: string): Buffer => Buffer.from(s, 'hex');

/** node:crypto's HKDF, the reference the formats were first written with. */
const nodeHkdf = (ikm: Buffer, info: string | Buffer, length: number, salt = Buffer.alloc(0)): Buffer =>
  Buffer.from(hkdfSync('sha256', ikm, salt, info, length));

describe('hkdfSha256', () => {
  it('has the three SHA-256 vectors of RFC 5869', () => {
    expect(vectors).toHaveLength(3);
  });

  for (const v of vectors) {
    it(`derives RFC 5869 ${v.name}`, () => {
      const salt = v.salt === '' ? undefined : hex(v.salt);
      expect(hkdfSha256(hex(v.ikm), hex(v.info), v.length, salt).toString('hex')).toBe(v.okm);
    });
  }

  it('treats an empty salt as no salt (32 zero bytes), as RFC 5869 says', () => {
    const v = vectors[2]!;
    expect(hkdfSha256(hex(v.ikm), '', v.length, Buffer.alloc(0)).toString('hex')).toBe(v.okm);
    expect(hkdfSha256(hex(v.ikm), '', v.length, Buffer.alloc(32)).toString('hex')).toBe(v.okm);
  });

  it("derives what node's hkdfSync derives for every label vmseal's formats use", () => {
    const labels = [
      'vmseal binding v1',
      'vmseal data check v1',
      'vmseal journal v2',
      'vmseal commit journal v1',
      'vmseal chain rekey journal v1',
      'vmseal locker VMSEAL-ETM-HMAC-SHA-256 encryption',
      'vmseal locker VMSEAL-ETM-HMAC-SHA-256 authentication',
      'vmseal state chunks',
    ];
    for (const ikmBytes of [32, 64]) {
      const ikm = randomBytes(ikmBytes);
      for (const label of labels) {
        expect(hkdfSha256(ikm, label, 32).equals(nodeHkdf(ikm, label, 32)), label).toBe(true);
        const salt = randomBytes(16); // the state file's chunk key has the file id as salt
        expect(hkdfSha256(ikm, label, 32, salt).equals(nodeHkdf(ikm, label, 32, salt)), `${label} with a salt`).toBe(true);
      }
    }
  });

  it("matches node's hkdfSync at every length around the block edges, and a UTF-8 info", () => {
    const ikm = randomBytes(32);
    for (const length of [1, 2, 31, 32, 33, 63, 64, 65, 96, 255 * 32]) {
      const got = hkdfSha256(ikm, 'vmseal ü info', length);
      expect(got.length).toBe(length);
      expect(got.equals(nodeHkdf(ikm, 'vmseal ü info', length)), `length ${length}`).toBe(true);
    }
  });

  it('returns a new buffer each time, so one caller wiping its key leaves the next one whole', () => {
    const ikm = randomBytes(32);
    const a = hkdfSha256(ikm, 'vmseal binding v1', 32);
    const b = hkdfSha256(ikm, 'vmseal binding v1', 32);
    a.fill(0);
    expect(b.equals(nodeHkdf(ikm, 'vmseal binding v1', 32))).toBe(true);
  });

  it('refuses a length it cannot derive with a RangeError and a code', () => {
    for (const length of [0, -1, 1.5, 255 * 32 + 1, Number.NaN]) {
      expect(() => hkdfSha256(randomBytes(32), 'x', length)).toThrow(
        expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE', message: `HKDF-SHA-256 derives 1 to 8160 bytes, not ${length}` }),
      );
    }
  });
});
