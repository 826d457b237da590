import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes, timingSafeEqual, type Hash } from 'node:crypto';
import { hkdfSha256 } from '../util/hkdf.js';
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
  const derive = (purpose: string): Buffer => hkdfSha256(kek, `vmseal locker ${ETM_MAC_NAME} ${purpose}`, 32);
  return { enc: derive('encryption'), mac: derive('authentication') };
}

/** A source of random bytes (crypto.randomBytes; tests inject fixed bytes to compute expected output). */
export type RandomSource = (n: number) => Buffer;

/** Lock `dict` under `kek` with a fresh random IV, in the construction `macName` names. */
export function lockDict(kek: Buffer, macName: MacName, dict: Uint8Array, random: RandomSource = randomBytes): Buffer {
  const iv = random(IV_BYTES);
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
  return sealMacThenEncrypt(kek, macName, dict, iv);
}

/**
 * VMware's MAC-then-encrypt construction on any plaintext (a key dict, or a whole .vmx for its
 * `encryption.data`): IV ‖ AES-256-CBC(key[0..32], IV, PKCS#7(plain)) ‖ HMAC(key, plain), the HMAC
 * keyed with the whole key (32 bytes, or 64 for the XTS-AES-256 variant). `macName` is HMAC-SHA-1 or
 * HMAC-SHA-256.
 */
export function sealMacThenEncrypt(key: Buffer, macName: Exclude<MacName, typeof ETM_MAC_NAME>, plain: Uint8Array, iv: Buffer): Buffer {
  const cipher = createCipheriv('aes-256-cbc', key.subarray(0, 32), iv);
  const body = Buffer.concat([cipher.update(plain), cipher.final()]);
  const mac = createHmac(hmacAlgorithm(macName), key).update(plain).digest();
  return Buffer.concat([iv, body, mac]);
}

/**
 * Open VMware's MAC-then-encrypt data (IV ‖ CBC ‖ MAC) of any length: the plaintext (the caller
 * wipes it), or undefined when the padding or the MAC is wrong — one outcome, in constant time with
 * respect to the plaintext (see openMacThenEncrypt below).
 */
export function openMacThenEncryptData(key: Buffer, macName: Exclude<MacName, typeof ETM_MAC_NAME>, data: Buffer): Buffer | undefined {
  const macBytes = MAC_BYTES[macName];
  if (data.length < IV_BYTES + BLOCK + macBytes || (data.length - IV_BYTES - macBytes) % BLOCK !== 0) return undefined;
  return openMacThenEncrypt(key, macName, data.subarray(0, IV_BYTES), data.subarray(IV_BYTES, data.length - macBytes), data.subarray(data.length - macBytes));
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
    const expected = macOfEveryUnpadding(kek, hmacAlgorithm(macName), padded, pad);
    const macOk = timingSafeEqual(expected, tag) ? 1 : 0;
    // One verdict from both checks, no branch between them.
    if ((valid & macOk) !== 1) return undefined;
    return Buffer.from(padded.subarray(0, padded.length - pad));
  } finally {
    padded.fill(0);
  }
}

const HMAC_BLOCK = 64; // the block size of SHA-1 and SHA-256

/**
 * The HMAC of the plaintext for every possible padding length k (1..16), keeping the one for `pad` by
 * masks: the work, and the lengths hashed, are the same whatever the padding byte is (valid or not).
 * HMAC(K, m) = H((K ^ opad) ‖ H((K ^ ipad) ‖ m)) is written out so that the inner hash of the part
 * every candidate shares (all but the last block) is computed once and copied 16 times: a large
 * plaintext (a .vmx) costs one pass, not sixteen.
 */
function macOfEveryUnpadding(key: Buffer, algorithm: string, padded: Buffer, pad: number): Buffer {
  const k0 = Buffer.alloc(HMAC_BLOCK);
  if (key.length > HMAC_BLOCK) createHash(algorithm).update(key).digest().copy(k0);
  else key.copy(k0);
  const ipad = Buffer.alloc(HMAC_BLOCK);
  const opad = Buffer.alloc(HMAC_BLOCK);
  for (let i = 0; i < HMAC_BLOCK; i++) {
    ipad[i] = k0[i]! ^ 0x36;
    opad[i] = k0[i]! ^ 0x5c;
  }
  k0.fill(0);
  const shared = padded.length - BLOCK;
  const inner: Hash = createHash(algorithm).update(ipad).update(padded.subarray(0, shared));
  let expected: Buffer | undefined;
  for (let k = 1; k <= BLOCK; k++) {
    const innerDigest = inner
      .copy()
      .update(padded.subarray(shared, padded.length - k))
      .digest();
    const candidate = createHash(algorithm).update(opad).update(innerDigest).digest();
    innerDigest.fill(0);
    expected ??= Buffer.alloc(candidate.length);
    const keep = -ctEqual(k, pad) & 0xff; // 0xff when k === pad, else 0
    for (let i = 0; i < expected.length; i++) expected[i]! |= candidate[i]! & keep;
    candidate.fill(0);
  }
  inner.digest().fill(0);
  ipad.fill(0);
  opad.fill(0);
  return expected!;
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
