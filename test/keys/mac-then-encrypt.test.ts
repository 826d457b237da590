// VMware's MAC-then-encrypt construction on data of any length (a key dict, or a whole .vmx): the
// constant-time opener computes the shared inner hash once; it must agree with a plain HMAC for every
// padding length and refuse every modification with one outcome.
import { describe, it, expect } from 'vitest';
import { createCipheriv, createHmac, randomBytes } from 'node:crypto';
import { openMacThenEncryptData, sealMacThenEncrypt } from '../../src/keys/locked-data.js';

/** IV ‖ AES-256-CBC(key[0..32], PKCS#7(plain)) ‖ HMAC(key, plain), built here with node:crypto alone. */
function reference(key: Buffer, hash: 'sha1' | 'sha256', plain: Buffer, iv: Buffer): Buffer {
  const c = createCipheriv('aes-256-cbc', key.subarray(0, 32), iv);
  return Buffer.concat([iv, c.update(plain), c.final(), createHmac(hash, key).update(plain).digest()]);
}

describe('MAC-then-encrypt data of any length', () => {
  for (const [macName, hash] of [
    ['HMAC-SHA-1', 'sha1'],
    ['HMAC-SHA-256', 'sha256'],
  ] as const) {
    it(`${macName}: seals like the reference and opens every length 0..40 and a 1 MiB text`, () => {
      for (const keyBytes of [32, 64]) {
        const key = randomBytes(keyBytes);
        for (const n of [...Array.from({ length: 41 }, (_, i) => i), 1 << 20]) {
          const plain = randomBytes(n);
          const iv = randomBytes(16);
          const sealed = sealMacThenEncrypt(key, macName, plain, iv);
          expect(sealed.equals(reference(key, hash, plain, iv))).toBe(true);
          expect(openMacThenEncryptData(key, macName, sealed)!.equals(plain)).toBe(true);
        }
      }
    });
  }

  it('a wrong key, a flipped bit anywhere, or a wrong length all give undefined', () => {
    const key = randomBytes(32);
    const plain = Buffer.from('config.version = "8"\nvirtualHW.version = "18"\n');
    const sealed = sealMacThenEncrypt(key, 'HMAC-SHA-1', plain, randomBytes(16));
    expect(openMacThenEncryptData(randomBytes(32), 'HMAC-SHA-1', sealed)).toBeUndefined();
    for (let at = 0; at < sealed.length; at++) {
      const bad = Buffer.from(sealed);
      bad[at]! ^= 0x01;
      expect(openMacThenEncryptData(key, 'HMAC-SHA-1', bad), `byte ${at}`).toBeUndefined();
    }
    expect(openMacThenEncryptData(key, 'HMAC-SHA-1', sealed.subarray(0, sealed.length - 1))).toBeUndefined();
    expect(openMacThenEncryptData(key, 'HMAC-SHA-1', Buffer.alloc(0))).toBeUndefined();
  });

  it('valid padding over a wrong MAC and a bad padding are one outcome', () => {
    const key = randomBytes(32);
    const iv = randomBytes(16);
    // A last block whose padding byte is 0 (invalid), with the MAC of the text the block would hold.
    const padded = Buffer.concat([Buffer.from('abcdefghijklmnop'), Buffer.alloc(16, 0)]);
    const c = createCipheriv('aes-256-cbc', key, iv);
    c.setAutoPadding(false);
    const badPadding = Buffer.concat([iv, c.update(padded), c.final(), createHmac('sha1', key).update(padded).digest()]);
    expect(openMacThenEncryptData(key, 'HMAC-SHA-1', badPadding)).toBeUndefined();
  });
});
