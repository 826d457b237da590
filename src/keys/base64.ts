/**
 * Strict standard base64 (RFC 4648 §4, with `=` padding) over bytes, never through a JS string: the
 * dicts that carry DEKs are built and parsed as Buffers so that key material can be wiped afterwards
 * (JS strings cannot be). Decoding is canonical: padding required, unused bits zero, no whitespace.
 */
const ALPHABET = Buffer.from('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', 'ascii');
const PAD = 0x3d;
const LOOKUP = new Int16Array(256).fill(-1);
for (let i = 0; i < 64; i++) LOOKUP[ALPHABET[i]!] = i;

export function base64Length(byteLength: number): number {
  return Math.ceil(byteLength / 3) * 4;
}

/** Encode bytes as base64 ASCII bytes. */
export function encodeBase64Bytes(src: Uint8Array): Buffer {
  const out = Buffer.alloc(base64Length(src.length));
  let o = 0;
  let i = 0;
  for (; i + 2 < src.length; i += 3) {
    const v = (src[i]! << 16) | (src[i + 1]! << 8) | src[i + 2]!;
    out[o++] = ALPHABET[v >> 18]!;
    out[o++] = ALPHABET[(v >> 12) & 63]!;
    out[o++] = ALPHABET[(v >> 6) & 63]!;
    out[o++] = ALPHABET[v & 63]!;
  }
  const rest = src.length - i;
  if (rest > 0) {
    const v = (src[i]! << 16) | (rest === 2 ? src[i + 1]! << 8 : 0);
    out[o++] = ALPHABET[v >> 18]!;
    out[o++] = ALPHABET[(v >> 12) & 63]!;
    out[o++] = rest === 2 ? ALPHABET[(v >> 6) & 63]! : PAD;
    out[o++] = PAD;
  }
  return out;
}

/** Decode canonical base64 ASCII bytes; undefined if they are not canonical base64. */
export function decodeBase64Bytes(src: Uint8Array): Buffer | undefined {
  if (src.length === 0 || src.length % 4 !== 0) return undefined;
  let pad = 0;
  if (src[src.length - 1] === PAD) pad++;
  if (src[src.length - 2] === PAD) pad++;
  const out = Buffer.alloc((src.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < src.length; i += 4) {
    const last = i + 4 === src.length;
    const a = LOOKUP[src[i]!]!;
    const b = LOOKUP[src[i + 1]!]!;
    const c = last && pad === 2 ? 0 : LOOKUP[src[i + 2]!]!;
    const d = last && pad >= 1 ? 0 : LOOKUP[src[i + 3]!]!;
    if (a < 0 || b < 0 || c < 0 || d < 0) {
      out.fill(0);
      return undefined;
    }
    // Canonical: the bits that padding discards must be zero.
    if (last && ((pad === 2 && (b & 15) !== 0) || (pad === 1 && (c & 3) !== 0))) {
      out.fill(0);
      return undefined;
    }
    const v = (a << 18) | (b << 12) | (c << 6) | d;
    out[o++] = v >> 16;
    if (o < out.length) out[o++] = (v >> 8) & 255;
    if (o < out.length) out[o++] = v & 255;
  }
  return out;
}

/** Decode a canonical base64 string (for non-secret values such as locked data and salts). */
export function decodeBase64String(text: string): Buffer | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined;
  return decodeBase64Bytes(Buffer.from(text, 'ascii'));
}

/** Canonical base64 text: whole groups, the last one padded, the bits padding discards zero. */
const CANONICAL = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$/;

/**
 * The length decodeBase64String would decode `text` to, or undefined where it refuses the text —
 * without decoding it: the keystore's validation checks every wrapped key of every read this way
 * (one regular expression each, no Buffer), since a keystore gains a key with every disk encrypted.
 */
export function canonicalBase64Length(text: string): number | undefined {
  if (text.length === 0 || text.length % 4 !== 0 || !CANONICAL.test(text)) return undefined;
  const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  return (text.length / 4) * 3 - pad;
}
