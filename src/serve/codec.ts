/**
 * The NBD codec: pure functions from wire bytes to values and back, with no sockets and no disks
 * (the connection state machine in connection.ts drives them; tests and fuzzers call them alone).
 * Every read is bounds-checked: a malformed payload throws WireError, which the connection turns
 * into NBD_REP_ERR_INVALID (options) or a protocol error reply (commands).
 */
import {
  EXPORT_NAME_PADDING,
  Info,
  MAX_STRING_BYTES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_IHAVEOPT,
  NBD_MAGIC,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_HEADER_BYTES,
  REQUEST_BYTES,
  Rep,
  ReplyType,
  NBD_REPLY_FLAG_DONE,
} from './protocol.js';

/** A payload that does not follow the specification's layout. */
export class WireError extends Error {}

/** A bounds-checked cursor over one payload. */
class Reader {
  #at = 0;
  constructor(private readonly buf: Buffer) {}
  #need(n: number, what: string): void {
    if (this.#at + n > this.buf.length) throw new WireError(`${what} runs past the end of the ${this.buf.length}-byte payload`);
  }
  u16(what: string): number {
    this.#need(2, what);
    const v = this.buf.readUInt16BE(this.#at);
    this.#at += 2;
    return v;
  }
  u32(what: string): number {
    this.#need(4, what);
    const v = this.buf.readUInt32BE(this.#at);
    this.#at += 4;
    return v;
  }
  /** A string prefixed by its 32-bit length, at most MAX_STRING_BYTES, valid UTF-8. */
  string(what: string): string {
    const n = this.u32(`the length of ${what}`);
    if (n > MAX_STRING_BYTES) throw new WireError(`${what} is ${n} bytes, beyond the limit of ${MAX_STRING_BYTES}`);
    this.#need(n, what);
    const bytes = this.buf.subarray(this.#at, this.#at + n);
    this.#at += n;
    const text = bytes.toString('utf8');
    if (!Buffer.from(text, 'utf8').equals(bytes)) throw new WireError(`${what} is not valid UTF-8`);
    return text;
  }
  end(what: string): void {
    if (this.#at !== this.buf.length) throw new WireError(`${what} has ${this.buf.length - this.#at} bytes more than its fields`);
  }
}

/** The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags. */
export function encodeGreeting(): Buffer {
  const b = Buffer.alloc(18);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(NBD_IHAVEOPT, 8);
  b.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
  return b;
}

export interface OptionHeader {
  option: number;
  length: number;
}

/** The 16-byte header of a client option; WireError when it does not start with IHAVEOPT. */
export function decodeOptionHeader(b: Buffer): OptionHeader {
  if (b.length !== OPTION_HEADER_BYTES) throw new WireError(`an option header is ${OPTION_HEADER_BYTES} bytes, not ${b.length}`);
  if (b.readBigUInt64BE(0) !== NBD_IHAVEOPT) throw new WireError('the option does not start with IHAVEOPT');
  return { option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

/** One option reply: magic, the option it answers, the reply type, and its data. */
export function encodeOptionReply(option: number, type: Rep | number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(20 + data.length);
  b.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, 20);
  return b;
}

/** An error reply whose data is a human-readable message (the specification allows one). */
export function encodeOptionError(option: number, type: Rep, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message.slice(0, 1024), 'utf8'));
}

/** NBD_REP_SERVER for NBD_OPT_LIST: the name's length, the name, then its description. */
export function encodeServerEntry(name: string, description = ''): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export interface InfoRequest {
  name: string;
  /** The NBD_INFO_* items asked for. */
  infos: number[];
}

/** The data of NBD_OPT_INFO / NBD_OPT_GO: name, then a count of 16-bit info requests. */
export function decodeInfoRequest(data: Buffer): InfoRequest {
  const r = new Reader(data);
  const name = r.string('the export name');
  const count = r.u16('the number of information requests');
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(r.u16('an information request'));
  r.end('NBD_OPT_INFO/GO');
  return { name, infos };
}

/** NBD_INFO_EXPORT: size and transmission flags. */
export function encodeInfoExport(size: number, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(size), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a string filling the rest of the reply. */
export function encodeInfoString(type: Info.NAME | Info.DESCRIPTION, text: string): Buffer {
  const t = Buffer.from(text, 'utf8');
  const b = Buffer.alloc(2 + t.length);
  b.writeUInt16BE(type, 0);
  t.copy(b, 2);
  return b;
}

export interface BlockSizes {
  minimum: number;
  preferred: number;
  maximum: number;
}

export function encodeInfoBlockSize(s: BlockSizes): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(s.minimum, 2);
  b.writeUInt32BE(s.preferred, 6);
  b.writeUInt32BE(s.maximum, 10);
  return b;
}

/** NBD_OPT_EXPORT_NAME's reply (it has no option-reply framing): size, flags, optional padding. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  b.writeBigUInt64BE(BigInt(size), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/** The data of NBD_OPT_LIST_META_CONTEXT / SET_META_CONTEXT: export name, count, queries. */
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  const r = new Reader(data);
  const name = r.string('the export name');
  const count = r.u32('the number of queries');
  const queries: string[] = [];
  for (let i = 0; i < count; i++) queries.push(r.string('a meta context query'));
  r.end('the meta context option');
  return { name, queries };
}

/** NBD_REP_META_CONTEXT data: the context id, then its name. */
export function encodeMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

export interface Request {
  flags: number;
  type: number;
  /** The client's 8-byte handle, echoed in every reply to this request. */
  cookie: Buffer;
  offset: number;
  length: number;
}

/**
 * A 28-byte request header. WireError on a wrong magic (the stream is then out of step and the
 * connection must close). Offsets beyond 2^53 are clamped to MAX_SAFE_INTEGER: they are out of
 * range for any export and get an error reply like every other out-of-range request.
 */
export function decodeRequest(b: Buffer): Request {
  if (b.length !== REQUEST_BYTES) throw new WireError(`a request is ${REQUEST_BYTES} bytes, not ${b.length}`);
  const magic = b.readUInt32BE(0);
  if (magic !== NBD_REQUEST_MAGIC) throw new WireError(`request magic 0x${magic.toString(16)} is not 0x${NBD_REQUEST_MAGIC.toString(16)}`);
  const offset = b.readBigUInt64BE(16);
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: Buffer.from(b.subarray(8, 16)),
    offset: offset > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(offset),
    length: b.readUInt32BE(24),
  };
}

/** A simple reply header (read data, if any, follows it). */
export function encodeSimpleReply(cookie: Buffer, error: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  cookie.copy(b, 8);
  return b;
}

/** A structured reply chunk header; `length` counts the payload that follows. */
export function encodeChunkHeader(cookie: Buffer, flags: number, type: ReplyType, length: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** Header and offset of an NBD_REPLY_TYPE_OFFSET_DATA chunk (final unless `done` is false); the `length` data bytes follow. */
export function encodeOffsetDataHeader(cookie: Buffer, offset: number, length: number, done = true): Buffer {
  const h = encodeChunkHeader(cookie, done ? NBD_REPLY_FLAG_DONE : 0, ReplyType.OFFSET_DATA, 8 + length);
  const o = Buffer.alloc(8);
  o.writeBigUInt64BE(BigInt(offset), 0);
  return Buffer.concat([h, o]);
}

/** A non-final NBD_REPLY_TYPE_OFFSET_HOLE chunk: `length` bytes at `offset` read as zeros. */
export function encodeOffsetHole(cookie: Buffer, offset: number, length: number): Buffer {
  const h = encodeChunkHeader(cookie, 0, ReplyType.OFFSET_HOLE, 12);
  const p = Buffer.alloc(12);
  p.writeBigUInt64BE(BigInt(offset), 0);
  p.writeUInt32BE(length, 8);
  return Buffer.concat([h, p]);
}

/** A final NBD_REPLY_TYPE_ERROR chunk: errno and a message for humans. */
export function encodeStructuredError(cookie: Buffer, error: number, message: string): Buffer {
  const m = Buffer.from(message.slice(0, 1024), 'utf8');
  const h = encodeChunkHeader(cookie, NBD_REPLY_FLAG_DONE, ReplyType.ERROR, 6 + m.length);
  const p = Buffer.alloc(6);
  p.writeUInt32BE(error, 0);
  p.writeUInt16BE(m.length, 4);
  return Buffer.concat([h, p, m]);
}

/** A final NBD_REPLY_TYPE_NONE chunk (a structured reply with nothing to say). */
export function encodeStructuredDone(cookie: Buffer): Buffer {
  return encodeChunkHeader(cookie, NBD_REPLY_FLAG_DONE, ReplyType.NONE, 0);
}

export interface Extent {
  length: number;
  /** NBD_STATE_* bits. */
  flags: number;
}

/** A final NBD_REPLY_TYPE_BLOCK_STATUS chunk for one meta context. */
export function encodeBlockStatus(cookie: Buffer, contextId: number, extents: readonly Extent[]): Buffer {
  const h = encodeChunkHeader(cookie, NBD_REPLY_FLAG_DONE, ReplyType.BLOCK_STATUS, 4 + 8 * extents.length);
  const p = Buffer.alloc(4 + 8 * extents.length);
  p.writeUInt32BE(contextId, 0);
  extents.forEach((e, i) => {
    p.writeUInt32BE(e.length, 4 + 8 * i);
    p.writeUInt32BE(e.flags, 8 + 8 * i);
  });
  return Buffer.concat([h, p]);
}
