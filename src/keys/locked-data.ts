import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { ETM_MAC_NAME, MAC_BYTES, type MacName } from './keysafe.js';

/**
 * The locked data of a KeySafe pair. Two constructions, told apart by the pair's MAC name:
 *
 * 1. MAC over the plaintext (MAC-then-encrypt) — MAC names HMAC-SHA-1 and HMAC-SHA-256. VMware
 *    Workstation's phrase lockers (checked against the public John the Ripper vectors), vmseal's phrase
 *    lockers, and the provider (fqid) lockers vmseal wrote before the encrypt-then-MAC format:
 *
 *      lockedData = IV (16 random bytes) ‖ AES-256-CBC(KEK, IV, PKCS#7(dict)) ‖ MAC
 *      MAC        = HMAC-SHA-1 or HMAC-SHA-256 (the pair's macName), key = the whole KEK,
 *                   message = the dict bytes without padding
 *
 *    The KEK is 32 bytes, except for phrase lockers whose pass2key dict says cipher=XTS-AES-256: then it
 *    is 64 bytes, AES-256-CBC uses its first 32 and the HMAC all 64.
 *
 *    The plaintext must be decrypted before the MAC can be checked, so opening is written to take the
 *    same path whatever is wrong: CBC with padding disabled, the PKCS#7 padding checked in constant
 *    time with no early exit, the HMAC computed anyway — for every one of the 16 possible padding
 *    lengths, the one matching the padding picked by masks, so the HMAC's input length does not depend
 *    on the (secret) padding byte — and both verdicts combined by bit operations into one. A padding
 *    failure and a MAC failure are one outcome (undefined → ERR_WRONG_KEY): no padding oracle.
 *
 * 2. Encrypt-then-MAC — MAC name VMSEAL-ETM-HMAC-SHA-256 (ETM_MAC_NAME). What vmseal writes for its
 *    provider (fqid) lockers:
 *
 *      encKey     = HKDF-SHA-256(IKM = KEK, salt = empty, info = "vmseal locker VMSEAL-ETM-HMAC-SHA-256 encryption", 32 bytes)
 *      macKey     = HKDF-SHA-256(IKM = KEK, salt = empty, info = "vmseal locker VMSEAL-ETM-HMAC-SHA-256 authentication", 32 bytes)
 *      lockedData = IV (16 random bytes) ‖ C ‖ HMAC-SHA-256(macKey, IV ‖ C),  C = AES-256-CBC(encKey, IV, PKCS#7(dict))
 *
 *    The tag is checked first, with crypto.timingSafeEqual, and nothing is decrypted unless it
 *    verifies; separate derived keys mean the KEK is never used directly by both AES and HMAC, and
 *    an old-format name on new-format data (or the reverse) simply fails.
 */
const IV_BYTES = 16;
const BLOCK = 16;

function hmacAlgorithm(macName: MacName): string {
  return macName === 'HMAC-SHA-1' ? 'sha1' : 'sha256';
}

export { ETM_MAC_NAME };

/** The encryption and MAC keys of an encrypt-then-MAC locker (the caller wipes them). */
function etmKeys(kek: Buffer): { enc: Buffer; mac: Buffer } {
  const derive = (purpose: string): Buffer => Buffer.from(hkdfSync('sha256', kek, Buffer.alloc(0), `vmseal locker ${ETM_MAC_NAME} ${purpose}`, 32));
  return { enc: derive('encryption'), mac: derive('authentication') };
}

/** Lock `dict` under `kek` with a fresh random IV, in the construction `macName` names. */
export function lockDict(kek: Buffer, macName: MacName, dict: Uint8Array): Buffer {
  const iv = randomBytes(IV_BYTES);
  if (macName === ETM_MAC_NAME) {
    const { enc, mac } = etmKeys(kek);
    try {
      const cipher = createCipheriv('aes-256-cbc', enc, iv);
      const body = Buffer.concat([cipher.update(dict), cipher.final()]);
      const tag = createHmac('sha256', mac).update(iv).update(body).digest();
      return Buffer.concat([iv, body, tag]);
    } finally {
      enc.fill(0);
      mac.fill(0);
    }
  }
  const cipher = createCipheriv('aes-256-cbc', kek.subarray(0, 32), iv);
  const body = Buffer.concat([cipher.update(dict), cipher.final()]);
  const mac = createHmac(hmacAlgorithm(macName), kek).update(dict).digest();
  return Buffer.concat([iv, body, mac]);
}

/**
 * Open locked data; returns the dict bytes (the caller wipes them), or undefined when it does not
 * verify: wrong KEK, wrong passphrase, or modified locked data. Which check failed is not told.
 */
export function unlockDict(kek: Buffer, macName: MacName, locked: Buffer): Buffer | undefined {
  const macBytes = MAC_BYTES[macName];
  // Lengths are public (they are in the KeySafe text): refusing them early reveals nothing.
  if (locked.length < IV_BYTES + BLOCK + macBytes || (locked.length - IV_BYTES - macBytes) % BLOCK !== 0) return undefined;
  const iv = locked.subarray(0, IV_BYTES);
  const body = locked.subarray(IV_BYTES, locked.length - macBytes);
  const mac = locked.subarray(locked.length - macBytes);
  return macName === ETM_MAC_NAME ? openEncryptThenMac(kek, iv, body, mac) : openMacThenEncrypt(kek, macName, iv, body, mac);
}

function openEncryptThenMac(kek: Buffer, iv: Buffer, body: Buffer, tag: Buffer): Buffer | undefined {
  const { enc, mac } = etmKeys(kek);
  try {
    const expected = createHmac('sha256', mac).update(iv).update(body).digest();
    if (!timingSafeEqual(expected, tag)) return undefined;
    // Authentic ciphertext: a padding error here can only come from a broken writer, not a probe.
    const decipher = createDecipheriv('aes-256-cbc', enc, iv);
    const head = decipher.update(body);
    try {
      return Buffer.concat([head, decipher.final()]);
    } catch {
      return undefined;
    } finally {
      head.fill(0);
    }
  } finally {
    enc.fill(0);
    mac.fill(0);
  }
}

function openMacThenEncrypt(kek: Buffer, macName: MacName, iv: Buffer, body: Buffer, tag: Buffer): Buffer | undefined {
  const decipher = createDecipheriv('aes-256-cbc', kek.subarray(0, 32), iv);
  decipher.setAutoPadding(false);
  const head = decipher.update(body);
  const padded = Buffer.concat([head, decipher.final()]);
  head.fill(0);
  try {
    const { valid, pad } = pkcs7Verdict(padded);
    // The HMAC for every possible padding length (1..16), keeping the one for `pad` by masks: the work,
    // and the lengths hashed, are the same whatever the padding byte is (valid or not).
    const algorithm = hmacAlgorithm(macName);
    const expected = Buffer.alloc(tag.length);
    for (let k = 1; k <= BLOCK; k++) {
      const candidate = createHmac(algorithm, kek)
        .update(padded.subarray(0, padded.length - k))
        .digest();
      const keep = -ctEqual(k, pad) & 0xff; // 0xff when k === pad, else 0
      for (let i = 0; i < expected.length; i++) expected[i]! |= candidate[i]! & keep;
      candidate.fill(0);
    }
    const macOk = timingSafeEqual(expected, tag) ? 1 : 0;
    // One verdict from both checks, no branch between them.
    if ((valid & macOk) !== 1) return undefined;
    return Buffer.from(padded.subarray(0, padded.length - pad));
  } finally {
    padded.fill(0);
  }
}

/** 1 if a === b else 0, for integers in [0, 2^31), without a data-dependent branch. */
function ctEqual(a: number, b: number): number {
  return (((a ^ b) - 1) >>> 31) & 1;
}

/** 1 if a < b else 0, for integers in [0, 2^31), without a data-dependent branch. */
function ctLess(a: number, b: number): number {
  return ((a - b) >>> 31) & 1;
}

/**
 * Check the PKCS#7 padding of a block-aligned buffer in constant time: the last 16 bytes are all
 * read and combined with masks, with no early exit. `valid` is 1 or 0; `pad` is the padding length
 * (1..16) when valid and unspecified (0..255) otherwise.
 */
function pkcs7Verdict(padded: Buffer): { valid: number; pad: number } {
  const n = padded.length;
  const pad = padded[n - 1]!;
  let bad = ctEqual(pad, 0) | ctLess(BLOCK, pad); // 0, or more than a block
  for (let i = 0; i < BLOCK; i++) {
    // Byte n-1-i belongs to the padding when i < pad: it must then equal pad.
    const inPad = ctLess(i, pad);
    bad |= inPad & (1 - ctEqual(padded[n - 1 - i]!, pad));
  }
  return { valid: 1 - bad, pad };
}

/** pkcs7Verdict for tests: `valid` (1/0) and the unpadded length. */
export function pkcs7PaddingCheck(padded: Buffer): { valid: number; length: number } {
  const { valid, pad } = pkcs7Verdict(padded);
  return { valid, length: padded.length - pad };
}
