import { createHmac } from 'node:crypto';

/**
 * HKDF-SHA-256 (RFC 5869), the one key-derivation rule every vmseal format uses:
 *
 *   PRK   = HMAC-SHA-256(key = salt, or 32 zero bytes when there is none, message = IKM)   (extract)
 *   T(0)  = empty;  T(i) = HMAC-SHA-256(PRK, T(i-1) ‖ info ‖ i as one byte)              (expand)
 *   OKM   = the first L bytes of T(1) ‖ T(2) ‖ …, L ≤ 255 × 32
 *
 * Byte for byte what node:crypto's hkdfSync('sha256', …) returns. Why not hkdfSync itself: it makes
 * two KeyObjects and runs as a synchronous crypto job, about twice the CPU of the two HMACs below
 * (≈7 µs against ≈3.5 µs per 32-byte key), and a batch of small images derives several keys for each
 * image on the thread that also feeds the cipher pool.
 *
 * The PRK and the blocks not returned are wiped before returning; the caller owns (and wipes) the
 * result.
 */
export function hkdfSha256(ikm: Uint8Array, info: string | Uint8Array, length: number, salt?: Uint8Array): Buffer {
  if (!Number.isInteger(length) || length < 1 || length > MAX_OKM_BYTES) {
    throw Object.assign(new RangeError(`HKDF-SHA-256 derives 1 to ${MAX_OKM_BYTES} bytes, not ${length}`), { code: 'ERR_OUT_OF_RANGE' });
  }
  const prk = createHmac('sha256', salt === undefined || salt.byteLength === 0 ? NO_SALT : salt)
    .update(ikm)
    .digest();
  try {
    if (length === HASH_BYTES) return expandBlock(prk, undefined, info, 1); // the common case: one block, no copy
    const okm = Buffer.allocUnsafe(length);
    let previous: Buffer | undefined;
    for (let i = 1, at = 0; at < length; i++, at += HASH_BYTES) {
      const block = expandBlock(prk, previous, info, i);
      block.copy(okm, at, 0, Math.min(HASH_BYTES, length - at));
      previous?.fill(0);
      previous = block;
    }
    previous?.fill(0);
    return okm;
  } finally {
    prk.fill(0);
  }
}

const HASH_BYTES = 32;
const MAX_OKM_BYTES = 255 * HASH_BYTES;
/** RFC 5869 §2.2: a missing salt is HashLen zero bytes (never written to, so sharing it is safe). */
const NO_SALT = Buffer.alloc(HASH_BYTES);
/** The counter of the first block, the only one a 32-byte key needs. */
const FIRST_BLOCK = Buffer.of(1);

function expandBlock(prk: Buffer, previous: Buffer | undefined, info: string | Uint8Array, i: number): Buffer {
  const hmac = createHmac('sha256', prk);
  if (previous !== undefined) hmac.update(previous);
  return hmac
    .update(info)
    .update(i === 1 ? FIRST_BLOCK : Buffer.of(i))
    .digest();
}
