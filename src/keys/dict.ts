import { KeySafeError } from './errors.js';
import { DICT_CIPHER_KEY_BYTES } from './dek.js';
import { decodeBase64Bytes, encodeBase64Bytes } from './base64.js';

/**
 * VMware "crypto dicts": `name=value(:name=value)*`, as in `type=key:cipher=AES-256:key=…` and
 * `pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=10000:salt=…`.
 *
 * Names are [A-Za-z][A-Za-z0-9]*. In values, the bytes `%`, `:`, `=` and every byte outside printable
 * ASCII (0x21–0x7e) are written `%xx` (lowercase hex); everything else is literal, so base64 keeps its
 * `+` and `/` but its `=` padding becomes `%3d` (exactly what Workstation writes:
 * `key=FIa+w+1qTXd4IsklJySWh1vh8POSEH1h00Vq2JbeLyw%3d`). Reading is strict: a raw `=` in a value, a `%`
 * without two lowercase hex digits, an empty or repeated name are refused.
 *
 * The key dict carries a DEK, so it is built and parsed as bytes (never a JS string) and wiped after use.
 */
const HEX = '0123456789abcdef';
const COLON = 0x3a;
const EQUALS = 0x3d;
const PERCENT = 0x25;

function mustEscape(b: number): boolean {
  return b === PERCENT || b === COLON || b === EQUALS || b < 0x21 || b > 0x7e;
}

/** Escape a dict value's bytes. */
export function escapeDictValue(bytes: Uint8Array): Buffer {
  let n = 0;
  for (const b of bytes) n += mustEscape(b) ? 3 : 1;
  const out = Buffer.alloc(n);
  let o = 0;
  for (const b of bytes) {
    if (mustEscape(b)) {
      out[o++] = PERCENT;
      out[o++] = HEX.charCodeAt(b >> 4);
      out[o++] = HEX.charCodeAt(b & 15);
    } else {
      out[o++] = b;
    }
  }
  return out;
}

function hexVal(b: number | undefined): number {
  if (b === undefined) return -1;
  if (b >= 0x30 && b <= 0x39) return b - 0x30;
  if (b >= 0x61 && b <= 0x66) return b - 0x61 + 10;
  return -1;
}

/** Unescape a dict value's bytes; throws a dict KeySafeError naming `what` on bad escapes. */
function unescapeDictValue(src: Uint8Array, what: string, position: number): Buffer {
  const out = Buffer.alloc(src.length);
  let o = 0;
  for (let i = 0; i < src.length; i++) {
    const b = src[i]!;
    if (b === PERCENT) {
      const h = hexVal(src[i + 1]);
      const l = hexVal(src[i + 2]);
      if (h < 0 || l < 0) {
        out.fill(0);
        throw new KeySafeError('dict', position, `${what}: a '%' in a dict value is not followed by two lowercase hex digits`);
      }
      out[o++] = (h << 4) | l;
      i += 2;
    } else if (b === EQUALS || b < 0x21 || b > 0x7e) {
      out.fill(0);
      throw new KeySafeError('dict', position, `${what}: a dict value has a character that must be escaped as %xx`);
    } else {
      out[o++] = b;
    }
  }
  const result = Buffer.from(out.subarray(0, o));
  out.fill(0);
  return result;
}

/**
 * Split a dict into [name, raw value bytes] pairs (values still escaped). The returned value buffers are
 * views into `src`.
 */
function splitDict(src: Uint8Array, what: string, position: number): Array<[string, Uint8Array]> {
  if (src.length === 0) throw new KeySafeError('dict', position, `${what} is empty`);
  const entries: Array<[string, Uint8Array]> = [];
  const seen = new Set<string>();
  let start = 0;
  for (let i = 0; i <= src.length; i++) {
    if (i < src.length && src[i] !== COLON) continue;
    const part = src.subarray(start, i);
    const eq = part.indexOf(EQUALS);
    if (eq <= 0) throw new KeySafeError('dict', position, `${what}: entry ${entries.length + 1} is not name=value`);
    const name = Buffer.from(part.subarray(0, eq)).toString('latin1');
    if (!/^[A-Za-z][A-Za-z0-9]*$/.test(name)) {
      throw new KeySafeError('dict', position, `${what}: entry ${entries.length + 1} has an invalid name`);
    }
    if (seen.has(name)) throw new KeySafeError('dict', position, `${what}: '${name}' appears twice`);
    seen.add(name);
    entries.push([name, part.subarray(eq + 1)]);
    start = i + 1;
  }
  return entries;
}

/** Parse a non-secret dict (e.g. pass2key) into name → value strings. */
export function parseDict(text: string, what: string, position = -1): Map<string, string> {
  const src = Buffer.from(text, 'utf8');
  const map = new Map<string, string>();
  for (const [name, raw] of splitDict(src, what, position)) {
    const value = unescapeDictValue(raw, what, position);
    map.set(name, value.toString('utf8'));
  }
  return map;
}

/** Serialize a non-secret dict from [name, value] pairs, in order. */
export function serializeDict(entries: Array<[string, string]>): string {
  return entries.map(([n, v]) => `${n}=${escapeDictValue(Buffer.from(v, 'utf8')).toString('latin1')}`).join(':');
}

/** The content of an unlocked key dict. The caller owns (and wipes) `key`. */
export interface KeyDict {
  /** Always 'key'. */
  readonly type: string;
  /** VMware cipher name, e.g. 'XTS-AES-256', 'AES-256'. */
  readonly cipher: string;
  readonly key: Buffer;
}

/** Build `type=key:cipher=<cipher>:key=<base64, '=' as %3d>` as bytes. The caller wipes the result. */
export function serializeKeyDict(cipher: string, key: Uint8Array): Buffer {
  const expected = DICT_CIPHER_KEY_BYTES[cipher];
  if (expected === undefined || key.length !== expected) {
    throw new KeySafeError('cipher', -1, `cannot build a key dict for cipher '${cipher}' with a ${key.length}-byte key`);
  }
  const b64 = encodeBase64Bytes(key);
  const escaped = escapeDictValue(b64);
  b64.fill(0);
  const out = Buffer.concat([Buffer.from(`type=key:cipher=${cipher}:key=`, 'ascii'), escaped]);
  escaped.fill(0);
  return out;
}

/**
 * Parse an unlocked key dict strictly: exactly the names type, cipher, key (any order); type=key; a
 * known cipher; canonical base64 of exactly that cipher's key length.
 */
export function parseKeyDict(src: Uint8Array): KeyDict {
  const what = 'the unlocked key dict';
  const entries = splitDict(src, what, -1);
  let type: string | undefined;
  let cipher: string | undefined;
  let keyRaw: Uint8Array | undefined;
  for (const [name, raw] of entries) {
    if (name === 'type') type = unescapeDictValue(raw, what, -1).toString('latin1');
    else if (name === 'cipher') cipher = unescapeDictValue(raw, what, -1).toString('latin1');
    else if (name === 'key') keyRaw = raw;
    else throw new KeySafeError('dict', -1, `${what} has an unexpected entry '${name}' (expected type, cipher, key)`);
  }
  if (type !== 'key') throw new KeySafeError('dict', -1, `${what} must have type=key`);
  if (cipher === undefined) throw new KeySafeError('dict', -1, `${what} has no cipher`);
  const expected = DICT_CIPHER_KEY_BYTES[cipher];
  if (expected === undefined) {
    throw new KeySafeError('cipher', -1, `${what} names an unknown cipher (expected one of ${Object.keys(DICT_CIPHER_KEY_BYTES).join(', ')})`);
  }
  if (keyRaw === undefined) throw new KeySafeError('dict', -1, `${what} has no key`);
  const b64 = unescapeDictValue(keyRaw, what, -1);
  const key = decodeBase64Bytes(b64);
  b64.fill(0);
  if (key === undefined) throw new KeySafeError('base64', -1, `${what}: the key is not canonical base64`);
  if (key.length !== expected) {
    const n = key.length;
    key.fill(0);
    throw new KeySafeError('length', -1, `${what}: a ${cipher} key must be ${expected} bytes but it is ${n}`);
  }
  return { type, cipher, key };
}
