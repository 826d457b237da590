// Differential tests against node:crypto's aes-128-xts / aes-256-xts (OpenSSL), one cipher object
// per data unit with IV = the unit's tweak: thousands of random keys, unit sizes from 16 to 65536
// (multiples of 16 and not: ciphertext stealing), unit numbers around 0, 2^32, 2^63 and 2^64−1.
import { createCipheriv, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { XtsCipher } from '../../src/xts/index.js';
import { implementations, referenceXts } from './helpers.js';

/** A small deterministic PRNG so that a failure names a reproducible case. */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

function randomKey(bytes: 32 | 64): Buffer {
  for (;;) {
    const key = randomBytes(bytes);
    if (!key.subarray(0, bytes / 2).equals(key.subarray(bytes / 2))) return key;
  }
}

const M64 = 2n ** 64n - 1n;
/** Interesting unit numbers; a batch of n units starting at one of these, clamped to end ≤ 2^64−1. */
const SPECIAL_UNITS = [0n, 1n, 2n ** 32n - 1n, 2n ** 32n, 2n ** 32n + 1n, 2n ** 63n - 1n, 2n ** 63n, M64];
const SIZES_SMALL = [16, 17, 20, 31, 32, 33, 47, 48, 64, 100, 255, 256, 257, 500, 511, 512, 513, 1000, 1024, 4095, 4096, 4097];

function check(cipher: XtsCipher, key: Buffer, unitSize: number, units: number, firstUnit: bigint): void {
  const data = randomBytes(unitSize * units);
  const expected = referenceXts(true, key, data, unitSize, firstUnit);
  const first = firstUnit <= BigInt(Number.MAX_SAFE_INTEGER) && firstUnit % 2n === 0n ? Number(firstUnit) : firstUnit;
  const encrypted = cipher.encrypt(data, { unitSize, firstUnit: first });
  if (!Buffer.from(encrypted).equals(expected)) {
    throw new Error(
      `encrypt differs from node:crypto: ${cipher.implementation}, ${key.length * 4}-bit, unitSize ${unitSize}, ${units} units from ${firstUnit}`,
    );
  }
  const decrypted = cipher.decrypt(encrypted, { unitSize, firstUnit: first });
  if (!Buffer.from(decrypted).equals(data)) {
    throw new Error(`decrypt does not invert encrypt: ${cipher.implementation}, unitSize ${unitSize}, ${units} units from ${firstUnit}`);
  }
}

describe.each(implementations)('%s against node:crypto', (implementation) => {
  it('thousands of random keys, random sizes and unit numbers', () => {
    const random = prng(0x1619);
    let cases = 0;
    for (let i = 0; i < 1500; i++) {
      const key = randomKey(i % 2 === 0 ? 64 : 32);
      const cipher = new XtsCipher(key, { implementation });
      const unitSize = SIZES_SMALL[Math.floor(random() * SIZES_SMALL.length)]!;
      const units = 1 + Math.floor(random() * 3);
      let firstUnit = random() < 0.5 ? SPECIAL_UNITS[Math.floor(random() * SPECIAL_UNITS.length)]! : BigInt(Math.floor(random() * 2 ** 52));
      if (firstUnit > M64 - BigInt(units - 1)) firstUnit = M64 - BigInt(units - 1);
      check(cipher, key, unitSize, units, firstUnit);
      cipher.dispose();
      cases++;
    }
    expect(cases).toBe(1500);
  });

  it.each([32, 64] as const)('every unit size from 16 to 600 bytes and large ones up to 65536 (%i-byte key)', (keyBytes) => {
    const key = randomKey(keyBytes);
    const cipher = new XtsCipher(key, { implementation });
    const sizes = [...Array.from({ length: 600 - 16 + 1 }, (_, i) => 16 + i), 1023, 1024, 1025, 2048, 4096, 4111, 8192, 16384, 32768, 65535, 65536];
    for (const unitSize of sizes) check(cipher, key, unitSize, unitSize <= 4096 ? 3 : 1, 7n);
    cipher.dispose();
  });

  it.each(SPECIAL_UNITS.map((u) => [u] as const))('batches of many units around unit %s', (unit) => {
    for (const keyBytes of [32, 64] as const) {
      const key = randomKey(keyBytes);
      const cipher = new XtsCipher(key, { implementation });
      for (const [unitSize, units] of [
        [512, 67],
        [4096, 9],
        [16, 129],
        [528, 33],
        [4100, 5],
      ] as const) {
        // Start a little before the special unit (or end exactly at 2^64−1).
        const back = BigInt(Math.floor(units / 2));
        let first = unit >= back ? unit - back : 0n;
        if (first > M64 - BigInt(units - 1)) first = M64 - BigInt(units - 1);
        check(cipher, key, unitSize, units, first);
      }
      cipher.dispose();
    }
  });

  it('the one-unit call equals node:crypto for random tweaks (full 128-bit)', () => {
    for (let i = 0; i < 200; i++) {
      const key = randomKey(i % 2 === 0 ? 64 : 32);
      const cipher = new XtsCipher(key, { implementation });
      const tweak = randomBytes(16);
      const data = randomBytes(16 + (i % 70) * 7);
      const algorithm = key.length === 32 ? 'aes-128-xts' : 'aes-256-xts';
      const c = createCipheriv(algorithm, key, tweak);
      const expected = Buffer.concat([c.update(data), c.final()]);
      expect(Buffer.from(cipher.encryptUnit(data, tweak))).toEqual(expected);
      expect(Buffer.from(cipher.decryptUnit(expected, tweak))).toEqual(data);
      cipher.dispose();
    }
  });
});
