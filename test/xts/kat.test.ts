// Known answers: the IEEE 1619-2007 Annex B vectors through every implementation this machine
// runs, each forced, through the batch API (tweak = unit number) and the explicit-tweak API.
// Also run against the sanitizer build (scripts/test-sanitized.mjs).
import { describe, expect, it } from 'vitest';
import { XtsCipher } from '../../src/xts/index.js';
import { hex, implementations, unitTweak, vectors } from './helpers.js';

describe('IEEE 1619 known answers', () => {
  it('has the 19 Annex B vectors and this machine runs at least the portable engine', () => {
    expect(vectors).toHaveLength(19);
    expect(implementations).toContain('portable');
  });

  // Vector 1's key is all zeros: Key1 = Key2, which vmseal refuses (IEEE 1619-2018).
  const weak = vectors.filter((v) =>
    hex(v.key)
      .subarray(0, v.key.length / 4)
      .equals(hex(v.key).subarray(v.key.length / 4)),
  );
  const usable = vectors.filter((v) => !weak.includes(v));

  it('refuses the vector whose key halves are equal', () => {
    expect(weak.map((v) => v.vector)).toEqual([1]);
    expect(() => new XtsCipher(hex(weak[0]!.key))).toThrow(expect.objectContaining({ code: 'ERR_XTS_WEAK_KEY' }));
  });

  describe.each(implementations)('%s', (implementation) => {
    it.each(usable.map((v) => [v.id, v] as const))('%s', (_id, v) => {
      const cipher = new XtsCipher(hex(v.key), { implementation });
      expect(cipher.implementation).toBe(implementation);
      expect(cipher.keyBits).toBe(v.keyBits / 2);
      const plaintext = hex(v.plaintext);
      const ciphertext = hex(v.ciphertext);
      expect(plaintext.length * 8).toBe(v.dataUnitBits);

      // Explicit tweak.
      const tweak = hex(v.tweak);
      expect(Buffer.from(cipher.encryptUnit(plaintext, tweak))).toEqual(ciphertext);
      expect(Buffer.from(cipher.decryptUnit(ciphertext, tweak))).toEqual(plaintext);

      // Tweak = unit number: the same vector as unit `dataUnit` of a batch of one …
      expect(v.dataUnit).toBeDefined();
      const unit = BigInt(v.dataUnit!);
      expect(unitTweak(unit)).toEqual(tweak);
      const unitSize = plaintext.length;
      expect(Buffer.from(cipher.encrypt(plaintext, { unitSize, firstUnit: unit }))).toEqual(ciphertext);
      expect(Buffer.from(cipher.decrypt(ciphertext, { unitSize, firstUnit: unit }))).toEqual(plaintext);

      // … and as the middle unit of a batch of three (the batch paths of the wide engines).
      if (unit > 0n) {
        const three = Buffer.concat([plaintext, plaintext, plaintext]);
        const encrypted = Buffer.from(cipher.encrypt(three, { unitSize, firstUnit: unit - 1n }));
        expect(encrypted.subarray(unitSize, 2 * unitSize)).toEqual(ciphertext);
        expect(Buffer.from(cipher.decrypt(encrypted, { unitSize, firstUnit: unit - 1n }))).toEqual(three);
      }
      cipher.dispose();
    });

    it('async batches give the known answer too', async () => {
      const v = usable.find((x) => x.dataUnitBits === 4096 && x.keyBits === 512)!;
      const cipher = new XtsCipher(hex(v.key), { implementation });
      const out = await cipher.encryptAsync(hex(v.plaintext), { unitSize: 512, firstUnit: BigInt(v.dataUnit!), threads: 1 });
      expect(Buffer.from(out)).toEqual(hex(v.ciphertext));
      cipher.dispose();
    });
  });
});
