import { KeySafeError, invalidArgument } from './errors.js';

/**
 * Field escaping of VMware key locators. On the wire every byte of a field's UTF-8 encoding that is not
 * [A-Za-z0-9] is written `%xx` with lowercase hex (`-` → `%2d`, `=` → `%3d`, `/` → `%2f`). Two literal
 * tokens stand for the special values: `<VMWARE-NULL>` (no value) and `<VMWARE-EMPTYSTRING>` (''); those
 * tokens may also appear escaped (`%3cVMWARE%2dNULL%3e`, as govmomi writes them) with the same meaning.
 *
 * vmseal reads strictly: `%` must be followed by two lowercase hex digits, an escape of an
 * alphanumeric byte is refused (non-canonical), and the bytes must be valid UTF-8. Together with
 * keeping each field's original spelling this makes parse → toString byte-exact.
 */
export const NULL_TOKEN = '<VMWARE-NULL>';
export const EMPTY_TOKEN = '<VMWARE-EMPTYSTRING>';

/** A decoded field: `value` (null for <VMWARE-NULL>) and `raw`, its exact spelling on the wire. */
export interface Field {
  readonly value: string | null;
  readonly raw: string;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const HEX = '0123456789abcdef';

function isWellFormed(s: string): boolean {
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

function isAlnum(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a);
}

/** Escape a string's UTF-8 bytes: alphanumerics as they are, every other byte as %xx (lowercase). */
export function escapeBytes(bytes: Uint8Array): string {
  // Each byte as the character of the same code (latin1), then the non-alphanumerics replaced by
  // their escapes: the regular expression walks the text natively, where a loop of string
  // concatenations cost ≈20 µs for the locked data of each new disk's KeySafe.
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1').replace(NOT_ALNUM, escapeChar);
}

const NOT_ALNUM = /[^A-Za-z0-9]/g;
const escapeChar = (c: string): string => {
  const b = c.charCodeAt(0);
  return '%' + HEX[b >> 4]! + HEX[b & 15]!;
};

/** The wire spelling vmseal writes for a value: the literal tokens for null and '', else escaped UTF-8. */
export function encodeField(value: string | null): string {
  if (value === null) return NULL_TOKEN;
  if (value === '') return EMPTY_TOKEN;
  if (typeof value !== 'string' || !isWellFormed(value)) {
    // A lone surrogate has no UTF-8 form: it would come back as U+FFFD, a different value.
    throw invalidArgument('Expected a well-formed string (no lone surrogates) for a KeySafe field');
  }
  return escapeBytes(Buffer.from(value, 'utf8'));
}

export function field(value: string | null): Field {
  return { value, raw: encodeField(value) };
}

/**
 * Decode one field's wire spelling that starts at `position` of the KeySafe text (for error offsets).
 * The caller has already cut the field at its delimiter.
 */
export function decodeField(raw: string, position: number, what: string): Field {
  if (raw === NULL_TOKEN) return { value: null, raw };
  if (raw === EMPTY_TOKEN) return { value: '', raw };
  if (raw.length === 0) {
    throw new KeySafeError('field', position, `${what} is empty (an empty value is written ${EMPTY_TOKEN})`);
  }
  const bytes = Buffer.allocUnsafe(raw.length);
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (isAlnum(c)) {
      bytes[n++] = c;
    } else if (c === 0x25 /* % */) {
      const h = HEX.indexOf(raw[i + 1] ?? 'x');
      const l = HEX.indexOf(raw[i + 2] ?? 'x');
      if (h < 0 || l < 0) {
        throw new KeySafeError('escape', position + i, `${what} has a '%' not followed by two lowercase hex digits`);
      }
      const b = (h << 4) | l;
      if (isAlnum(b)) {
        throw new KeySafeError('escape', position + i, `${what} escapes an alphanumeric character (non-canonical escape)`);
      }
      bytes[n++] = b;
      i += 2;
    } else {
      throw new KeySafeError('escape', position + i, `${what} has a character that must be escaped as %xx`);
    }
  }
  let value: string;
  try {
    value = utf8.decode(bytes.subarray(0, n));
  } catch {
    throw new KeySafeError('utf8', position, `${what} does not decode to valid UTF-8`);
  }
  if (value === NULL_TOKEN) return { value: null, raw };
  if (value === EMPTY_TOKEN) return { value: '', raw };
  return { value, raw };
}
