/**
 * TTLV, KMIP's binary encoding. Every item is
 *
 *   Tag (3 bytes, big-endian, 0x42xxxx) ‖ Type (1 byte) ‖ Length (4 bytes, big-endian) ‖ Value ‖ Padding
 *
 * where Length is the *unpadded* length of Value and Padding is zero bytes up to a multiple of 8.
 * Fixed-size types: Integer, Enumeration, Interval (length 4, occupy 8); Long Integer, Boolean,
 * Date-Time, Date-Time Extended (length 8). Big Integer: length a multiple of 8, two's complement.
 * Text String (UTF-8) and Byte String: any length, padded. Structure: its value is the
 * concatenation of its items (so its length is always a multiple of 8).
 *
 * The writer (TtlvWriter) appends to a growing buffer and, like pg-protocol's writer, reserves a
 * structure's length slot when the structure opens and fills it in when it closes. The reader
 * (decodeTtlv) is bounded: a maximum message size, a maximum nesting depth, a maximum item count,
 * every length checked against what remains of the enclosing structure, exact lengths for fixed-size
 * types, Big Integers of at most MAX_BIG_INTEGER_BYTES (decoded in linear time), zero padding,
 * valid UTF-8, Booleans 0 or 1. Byte String values are `subarray`s of the input.
 */
import { expected } from '../errors.js';
import { KmipError } from './errors.js';
import { ItemType, tagName } from './tags.js';

export const TTLV_HEADER_LENGTH = 8; // tag 3 + type 1 + length 4

export type TtlvItem =
  | { readonly tag: number; readonly type: 'Structure'; readonly value: readonly TtlvItem[] }
  | { readonly tag: number; readonly type: 'Integer'; readonly value: number }
  | { readonly tag: number; readonly type: 'LongInteger'; readonly value: bigint }
  | { readonly tag: number; readonly type: 'BigInteger'; readonly value: bigint }
  | { readonly tag: number; readonly type: 'Enumeration'; readonly value: number }
  | { readonly tag: number; readonly type: 'Boolean'; readonly value: boolean }
  | { readonly tag: number; readonly type: 'TextString'; readonly value: string }
  | { readonly tag: number; readonly type: 'ByteString'; readonly value: Buffer }
  | { readonly tag: number; readonly type: 'DateTime'; readonly value: bigint }
  | { readonly tag: number; readonly type: 'Interval'; readonly value: number }
  | { readonly tag: number; readonly type: 'DateTimeExtended'; readonly value: bigint };

export type TtlvType = TtlvItem['type'];

const TYPE_NAMES: Record<number, TtlvType> = {
  [ItemType.Structure]: 'Structure',
  [ItemType.Integer]: 'Integer',
  [ItemType.LongInteger]: 'LongInteger',
  [ItemType.BigInteger]: 'BigInteger',
  [ItemType.Enumeration]: 'Enumeration',
  [ItemType.Boolean]: 'Boolean',
  [ItemType.TextString]: 'TextString',
  [ItemType.ByteString]: 'ByteString',
  [ItemType.DateTime]: 'DateTime',
  [ItemType.Interval]: 'Interval',
  [ItemType.DateTimeExtended]: 'DateTimeExtended',
};

/** Value lengths that fixed-size types must declare. */
const FIXED_LENGTH: Partial<Record<TtlvType, number>> = {
  Integer: 4,
  Enumeration: 4,
  Interval: 4,
  LongInteger: 8,
  Boolean: 8,
  DateTime: 8,
  DateTimeExtended: 8,
};

// Arithmetic, not bit operations: lengths up to 2^32 - 1 must not wrap to negative 32-bit values.
export const padded = (length: number): number => Math.ceil(length / 8) * 8;

// ---------------------------------------------------------------------------------------------
// Writer

/**
 * Appends TTLV items to a private growing buffer. Open a structure with `begin(tag)`, write its
 * items, close it with `end()`; `finish()` checks every structure was closed and returns the bytes.
 * One writer per message: there is no shared module-level writer.
 */
export class TtlvWriter {
  private buf: Buffer;
  private pos = 0;
  /** Offsets of the length slots of the structures still open. */
  private readonly open: number[] = [];

  constructor(initialSize = 256) {
    this.buf = Buffer.alloc(initialSize);
  }

  private ensure(extra: number): void {
    if (this.pos + extra <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + extra) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf.fill(0); // requests may carry a password: leave no stray copy behind
    this.buf = next;
  }

  private header(tag: number, type: number, length: number): void {
    if (!Number.isInteger(tag) || tag < 0 || tag > 0xffffff) {
      throw new KmipError('ERR_INVALID_ARGUMENT', expected('a 3-byte tag', 'a TTLV item', tag));
    }
    this.ensure(TTLV_HEADER_LENGTH);
    this.buf.writeUIntBE(tag, this.pos, 3);
    this.buf[this.pos + 3] = type;
    this.buf.writeUInt32BE(length, this.pos + 4);
    this.pos += TTLV_HEADER_LENGTH;
  }

  /** Open a structure; its length is filled in by the matching end(). */
  begin(tag: number): this {
    this.header(tag, ItemType.Structure, 0);
    this.open.push(this.pos - 4);
    return this;
  }

  end(): this {
    const slot = this.open.pop();
    if (slot === undefined) throw new KmipError('ERR_INVALID_ARGUMENT', 'TtlvWriter.end() called with no open structure');
    this.buf.writeUInt32BE(this.pos - (slot + 4), slot);
    return this;
  }

  /** Write a structure whose contents `body` writes. */
  struct(tag: number, body: (w: this) => void): this {
    this.begin(tag);
    body(this);
    return this.end();
  }

  integer(tag: number, value: number): this {
    if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) {
      throw new KmipError('ERR_INVALID_ARGUMENT', expected('a 32-bit signed integer', tagName(tag), value));
    }
    this.header(tag, ItemType.Integer, 4);
    this.ensure(8);
    this.buf.writeInt32BE(value, this.pos);
    this.buf.writeUInt32BE(0, this.pos + 4);
    this.pos += 8;
    return this;
  }

  private uint32(tag: number, type: number, value: number, what: string): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
      throw new KmipError('ERR_INVALID_ARGUMENT', expected(`a 32-bit unsigned ${what}`, tagName(tag), value));
    }
    this.header(tag, type, 4);
    this.ensure(8);
    this.buf.writeUInt32BE(value, this.pos);
    this.buf.writeUInt32BE(0, this.pos + 4);
    this.pos += 8;
    return this;
  }

  enumeration(tag: number, value: number): this {
    return this.uint32(tag, ItemType.Enumeration, value, 'enumeration');
  }

  interval(tag: number, value: number): this {
    return this.uint32(tag, ItemType.Interval, value, 'interval');
  }

  private int64(tag: number, type: number, value: bigint): this {
    this.header(tag, type, 8);
    this.ensure(8);
    this.buf.writeBigInt64BE(BigInt.asIntN(64, value), this.pos);
    this.pos += 8;
    return this;
  }

  longInteger(tag: number, value: bigint): this {
    return this.int64(tag, ItemType.LongInteger, value);
  }

  dateTime(tag: number, value: bigint): this {
    return this.int64(tag, ItemType.DateTime, value);
  }

  dateTimeExtended(tag: number, value: bigint): this {
    return this.int64(tag, ItemType.DateTimeExtended, value);
  }

  boolean(tag: number, value: boolean): this {
    return this.int64(tag, ItemType.Boolean, value ? 1n : 0n);
  }

  /** Big Integer: two's complement, big-endian, sign-extended to a multiple of 8 bytes. */
  bigInteger(tag: number, value: bigint): this {
    let bytes = 8;
    while (BigInt.asIntN(bytes * 8, value) !== value) {
      bytes += 8;
      if (bytes > MAX_BIG_INTEGER_BYTES) {
        throw new KmipError('ERR_INVALID_ARGUMENT', `Expected a Big Integer of at most ${MAX_BIG_INTEGER_BYTES} bytes for ${tagName(tag)}`);
      }
    }
    this.header(tag, ItemType.BigInteger, bytes);
    this.ensure(bytes);
    let v = BigInt.asUintN(bytes * 8, value);
    for (let i = bytes - 1; i >= 0; i--) {
      this.buf[this.pos + i] = Number(v & 0xffn);
      v >>= 8n;
    }
    this.pos += bytes;
    return this;
  }

  private bytes(tag: number, type: number, data: Uint8Array): this {
    const total = padded(data.length);
    this.header(tag, type, data.length);
    this.ensure(total);
    this.buf.set(data, this.pos);
    this.buf.fill(0, this.pos + data.length, this.pos + total);
    this.pos += total;
    return this;
  }

  textString(tag: number, value: string): this {
    return this.bytes(tag, ItemType.TextString, Buffer.from(value, 'utf8'));
  }

  byteString(tag: number, value: Uint8Array): this {
    return this.bytes(tag, ItemType.ByteString, value);
  }

  /** Write a decoded item tree back (used to re-encode, and by tests). */
  item(item: TtlvItem): this {
    switch (item.type) {
      case 'Structure':
        this.begin(item.tag);
        for (const child of item.value) this.item(child);
        return this.end();
      case 'Integer':
        return this.integer(item.tag, item.value);
      case 'LongInteger':
        return this.longInteger(item.tag, item.value);
      case 'BigInteger':
        return this.bigInteger(item.tag, item.value);
      case 'Enumeration':
        return this.enumeration(item.tag, item.value);
      case 'Boolean':
        return this.boolean(item.tag, item.value);
      case 'TextString':
        return this.textString(item.tag, item.value);
      case 'ByteString':
        return this.byteString(item.tag, item.value);
      case 'DateTime':
        return this.dateTime(item.tag, item.value);
      case 'Interval':
        return this.interval(item.tag, item.value);
      case 'DateTimeExtended':
        return this.dateTimeExtended(item.tag, item.value);
    }
  }

  /** The bytes written (a copy; the writer's own buffer is wiped). */
  finish(): Buffer {
    if (this.open.length !== 0) {
      throw new KmipError('ERR_INVALID_ARGUMENT', `TtlvWriter.finish() called with ${this.open.length} structure(s) still open`);
    }
    const out = Buffer.from(this.buf.subarray(0, this.pos));
    this.buf.fill(0);
    return out;
  }
}

export function encodeTtlv(item: TtlvItem): Buffer {
  return new TtlvWriter().item(item).finish();
}

// ---------------------------------------------------------------------------------------------
// Reader

export interface TtlvLimits {
  /** Largest whole message accepted, header included (default: 1 MiB). */
  maxMessageSize?: number;
  /** Deepest structure nesting accepted; the top-level item is depth 1 (default: 16). */
  maxDepth?: number;
  /** Most items in one message (default: 10 000). */
  maxItems?: number;
}

export const DEFAULT_TTLV_LIMITS: Required<TtlvLimits> = {
  maxMessageSize: 1024 * 1024,
  maxDepth: 16,
  maxItems: 10_000,
};

/**
 * Largest Big Integer value accepted, in bytes (4096 bits). KMIP uses Big Integers for RSA/DH
 * parameters, the largest of which (an 8192-bit modulus would be 1024 bytes) vmseal never asks
 * for; vmseal itself only fetches AES keys. The cap keeps a hostile server from making the client
 * build an arbitrarily large bigint; the writer refuses the same size so both sides agree.
 */
export const MAX_BIG_INTEGER_BYTES = 512;

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A Big Integer's value: big-endian two's complement. Converted in one linear step through a hex
 * string (BigInt parses hex in linear time) instead of shifting in one byte at a time, which copies
 * the growing bigint on every byte and is quadratic in the length. A set top bit means negative:
 * subtract 2^(8·length).
 */
function bigIntegerValue(bytes: Buffer): bigint {
  const unsigned = BigInt('0x' + bytes.toString('hex'));
  return (bytes[0]! & 0x80) !== 0 ? unsigned - (1n << BigInt(bytes.length * 8)) : unsigned;
}

function ttlvError(offset: number, message: string): KmipError {
  return new KmipError('ERR_KMIP_TTLV', `Invalid TTLV at offset ${offset}: ${message}`);
}

/**
 * Decode exactly one TTLV item that spans all of `data` (a whole message). Throws KmipError
 * ERR_KMIP_TTLV naming the offset of the first problem.
 */
export function decodeTtlv(data: Uint8Array, limits: TtlvLimits = {}): TtlvItem {
  const lim = { ...DEFAULT_TTLV_LIMITS, ...limits };
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  if (buf.length > lim.maxMessageSize) {
    throw ttlvError(0, `message of ${buf.length} bytes exceeds the maximum of ${lim.maxMessageSize}`);
  }
  if (buf.length < TTLV_HEADER_LENGTH) {
    throw ttlvError(0, `expected at least ${TTLV_HEADER_LENGTH} bytes but received ${buf.length}`);
  }
  let items = 0;

  // Reads the item at `offset`, which must end at or before `limit`; returns it and its end offset.
  const readItem = (offset: number, limit: number, depth: number): { item: TtlvItem; next: number } => {
    if (limit - offset < TTLV_HEADER_LENGTH) {
      throw ttlvError(offset, `item header needs ${TTLV_HEADER_LENGTH} bytes but only ${limit - offset} remain`);
    }
    if (++items > lim.maxItems) throw ttlvError(offset, `more than ${lim.maxItems} items`);
    const tag = buf.readUIntBE(offset, 3);
    const typeByte = buf[offset + 3]!;
    const length = buf.readUInt32BE(offset + 4);
    const type = TYPE_NAMES[typeByte];
    const where = `${tagName(tag)} (tag 0x${tag.toString(16).padStart(6, '0')})`;
    if (type === undefined) throw ttlvError(offset, `unknown item type 0x${typeByte.toString(16).padStart(2, '0')} for ${where}`);
    const start = offset + TTLV_HEADER_LENGTH;
    const total = padded(length);
    if (total > limit - start) {
      throw ttlvError(offset, `${where} declares ${length} value bytes but only ${limit - start} remain`);
    }
    const fixed = FIXED_LENGTH[type];
    if (fixed !== undefined && length !== fixed) {
      throw ttlvError(offset, `${type} ${where} must have length ${fixed} but declares ${length}`);
    }
    if (type === 'BigInteger' && (length === 0 || length % 8 !== 0)) {
      throw ttlvError(offset, `BigInteger ${where} length must be a positive multiple of 8 but is ${length}`);
    }
    if (type === 'BigInteger' && length > MAX_BIG_INTEGER_BYTES) {
      throw ttlvError(offset, `BigInteger ${where} declares ${length} bytes, more than the maximum of ${MAX_BIG_INTEGER_BYTES}`);
    }
    if (type === 'Structure' && length % 8 !== 0) {
      throw ttlvError(offset, `Structure ${where} length must be a multiple of 8 but is ${length}`);
    }
    for (let i = start + length; i < start + total; i++) {
      if (buf[i] !== 0) throw ttlvError(i, `non-zero padding byte after ${where}`);
    }
    const end = start + total;
    switch (type) {
      case 'Structure': {
        if (depth + 1 > lim.maxDepth) throw ttlvError(offset, `structures nested deeper than ${lim.maxDepth} levels`);
        const children: TtlvItem[] = [];
        let p = start;
        while (p < end) {
          const r = readItem(p, end, depth + 1);
          children.push(r.item);
          p = r.next;
        }
        return { item: { tag, type, value: children }, next: end };
      }
      case 'Integer':
        return { item: { tag, type, value: buf.readInt32BE(start) }, next: end };
      case 'Enumeration':
      case 'Interval':
        return { item: { tag, type, value: buf.readUInt32BE(start) }, next: end };
      case 'LongInteger':
      case 'DateTime':
      case 'DateTimeExtended':
        return { item: { tag, type, value: buf.readBigInt64BE(start) }, next: end };
      case 'Boolean': {
        const v = buf.readBigUInt64BE(start);
        if (v > 1n) throw ttlvError(start, `Boolean ${where} must be 0 or 1 but is ${v}`);
        return { item: { tag, type, value: v === 1n }, next: end };
      }
      case 'BigInteger':
        return { item: { tag, type, value: bigIntegerValue(buf.subarray(start, start + length)) }, next: end };
      case 'TextString': {
        let text: string;
        try {
          text = utf8.decode(buf.subarray(start, start + length));
        } catch {
          throw ttlvError(start, `TextString ${where} is not valid UTF-8`);
        }
        return { item: { tag, type, value: text }, next: end };
      }
      case 'ByteString':
        return { item: { tag, type, value: buf.subarray(start, start + length) }, next: end };
    }
  };

  const { item, next } = readItem(0, buf.length, 0);
  if (next !== buf.length) throw ttlvError(next, `${buf.length - next} bytes follow the top-level item`);
  return item;
}

/**
 * For a stream: given the first 8 bytes of a message, the total message length they announce
 * (header included). Checks the tag, that it is a Structure, and the size limit.
 */
export function messageLengthFromHeader(header: Uint8Array, expectedTag: number, maxMessageSize: number): number {
  const b = Buffer.from(header.buffer, header.byteOffset, header.byteLength);
  const tag = b.readUIntBE(0, 3);
  if (tag !== expectedTag) {
    throw ttlvError(0, `expected message tag ${tagName(expectedTag)} (0x${expectedTag.toString(16)}) but received 0x${tag.toString(16).padStart(6, '0')}`);
  }
  if (b[3] !== ItemType.Structure) throw ttlvError(3, `expected a Structure (type 0x01) but received type 0x${b[3]!.toString(16).padStart(2, '0')}`);
  const length = b.readUInt32BE(4);
  if (length % 8 !== 0) throw ttlvError(4, `Structure length must be a multiple of 8 but is ${length}`);
  if (length > maxMessageSize - TTLV_HEADER_LENGTH) {
    throw ttlvError(4, `message announces ${length + TTLV_HEADER_LENGTH} bytes, more than the maximum of ${maxMessageSize}`);
  }
  return length + TTLV_HEADER_LENGTH;
}
