import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { MAC_BYTES, type MacName } from './keysafe.js';

/**
 * The locked data of a KeySafe pair (both phrase and fqid lockers, vmseal and VMware alike):
 *
 *   lockedData = IV (16 random bytes) ‖ AES-256-CBC(KEK, IV, PKCS#7(dict)) ‖ MAC
 *   MAC        = HMAC-SHA-1 or HMAC-SHA-256 (the pair's macName), key = the whole KEK,
 *                message = the dict bytes without padding
 *
 * The KEK is 32 bytes, except for phrase lockers whose pass2key dict says cipher=XTS-AES-256: then it is
 * 64 bytes, AES-256-CBC uses its first 32 and the HMAC all 64.
 *
 * This is VMware Workstation's construction for phrase lockers (checked against the public John the
 * Ripper vectors). For fqid lockers vmseal uses the same construction with HMAC-SHA-256, consistent with
 * the sizes of vSphere's public samples (272/288 bytes = 16 + CBC + 32). MAC-then-encrypt: the MAC is
 * checked after decryption, and a padding failure is reported exactly like a MAC failure (one outcome,
 * "wrong key"), so the two are not distinguishable to a caller.
 */
const IV_BYTES = 16;

function hmacAlgorithm(macName: MacName): string {
  return macName === 'HMAC-SHA-1' ? 'sha1' : 'sha256';
}

/** Lock `dict` under `kek` with a fresh random IV. */
export function lockDict(kek: Buffer, macName: MacName, dict: Uint8Array): Buffer {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-cbc', kek.subarray(0, 32), iv);
  const body = Buffer.concat([cipher.update(dict), cipher.final()]);
  const mac = createHmac(hmacAlgorithm(macName), kek).update(dict).digest();
  return Buffer.concat([iv, body, mac]);
}

/**
 * Open locked data; returns the dict bytes (the caller wipes them), or undefined when the MAC (or the
 * padding) does not verify: wrong KEK, wrong passphrase, or modified locked data.
 */
export function unlockDict(kek: Buffer, macName: MacName, locked: Buffer): Buffer | undefined {
  const macBytes = MAC_BYTES[macName];
  if (locked.length < IV_BYTES + 16 + macBytes || (locked.length - IV_BYTES - macBytes) % 16 !== 0) return undefined;
  const iv = locked.subarray(0, IV_BYTES);
  const body = locked.subarray(IV_BYTES, locked.length - macBytes);
  const mac = locked.subarray(locked.length - macBytes);
  let dict: Buffer;
  const decipher = createDecipheriv('aes-256-cbc', kek.subarray(0, 32), iv);
  const head = decipher.update(body);
  try {
    dict = Buffer.concat([head, decipher.final()]);
  } catch {
    head.fill(0);
    return undefined;
  } finally {
    head.fill(0);
  }
  const expected = createHmac(hmacAlgorithm(macName), kek).update(dict).digest();
  if (!timingSafeEqual(expected, mac)) {
    dict.fill(0);
    return undefined;
  }
  return dict;
}
