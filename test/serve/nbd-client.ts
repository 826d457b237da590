// A small NBD client over a raw socket, written from the specification independently of
// src/serve's codec (its own byte layouts), for protocol-level tests and for playing bad clients.
import { createConnection, type Socket } from 'node:net';

export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META_CONTEXT: 9, SET_META_CONTEXT: 10 } as const;
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const FLAG = { FUA: 1, NO_HOLE: 2, REQ_ONE: 8, FAST_ZERO: 16 } as const;
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_TOO_BIG = 0x80000009;
export const EPERM = 1;
export const EINVAL = 22;
export const ENOSPC = 28;
export const EOVERFLOW = 75;
export const ENOTSUP = 95;

const IHAVEOPT = Buffer.from('IHAVEOPT', 'ascii');

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface Reply {
  /** 0 on success, else the NBD errno. */
  error: number;
  /** READ data (simple or OFFSET_DATA chunks). */
  data: Buffer;
  /** BLOCK_STATUS descriptors: [length, flags]. */
  extents: Array<[number, number]>;
  /** Structured error message, if any. */
  message: string;
  /** OFFSET_HOLE chunks of a structured READ: [offset inside the read, length]. */
  holes: Array<[number, number]>;
  structured: boolean;
}

/** Byte stream reader with exact reads and end detection. */
export class RawClient {
  readonly socket: Socket;
  #buf = Buffer.alloc(0);
  #closed = false;
  #wake: (() => void) | undefined;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, d]);
      this.#wake?.();
    });
    const end = (): void => {
      this.#closed = true;
      this.#wake?.();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  /** `allowHalfOpen`: keep our side open after the server's FIN (a client that never closes). */
  static connect(path: string, opts: { allowHalfOpen?: boolean } = {}): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = createConnection({ path, allowHalfOpen: opts.allowHalfOpen === true });
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  /** Over TCP (loopback in tests). */
  static connectTcp(host: string, port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = createConnection({ host, port });
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  /** Exactly n bytes; rejects with 'closed' if the server closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) {
      if (this.#closed) throw new Error('closed');
      await new Promise<void>((r) => (this.#wake = r));
      this.#wake = undefined;
    }
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return Buffer.from(out);
  }

  /** Resolves true once the server has closed the connection (after reading what was left). */
  async closedByServer(): Promise<boolean> {
    while (!this.#closed) {
      await new Promise<void>((r) => (this.#wake = r));
      this.#wake = undefined;
    }
    return true;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  close(): void {
    this.socket.destroy();
  }

  /** Read the 18-byte greeting, check it, send client flags (fixed newstyle, no zeroes). */
  async handshake(clientFlags = 3): Promise<number> {
    const g = await this.read(18);
    if (g.subarray(0, 8).toString('ascii') !== 'NBDMAGIC' || !g.subarray(8, 16).equals(IHAVEOPT)) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), declaredLength = data.length): void {
    const h = Buffer.alloc(16);
    IHAVEOPT.copy(h, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(declaredLength, 12);
    this.write(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== 0x3e889045565a9n) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }

  /** Replies until a final one (ACK or an error). */
  async optionReplies(): Promise<OptionReply[]> {
    const out: OptionReply[] = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === REP_ACK || r.type >= 0x80000000) return out;
    }
  }

  static nameData(name: string, infos: number[] = []): Buffer {
    const n = Buffer.from(name, 'utf8');
    const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt16BE(infos.length, 4 + n.length);
    infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
    return b;
  }

  static metaData(name: string, queries: string[]): Buffer {
    const parts: Buffer[] = [];
    const n = Buffer.from(name, 'utf8');
    const h = Buffer.alloc(4);
    h.writeUInt32BE(n.length);
    parts.push(h, n);
    const c = Buffer.alloc(4);
    c.writeUInt32BE(queries.length);
    parts.push(c);
    for (const q of queries) {
      const qb = Buffer.from(q, 'utf8');
      const l = Buffer.alloc(4);
      l.writeUInt32BE(qb.length);
      parts.push(l, qb);
    }
    return Buffer.concat(parts);
  }

  /** Negotiate to transmission: optional structured replies and base:allocation, then GO. */
  async go(
    name: string,
    opts: { structured?: boolean; meta?: boolean; blockSize?: boolean; greeted?: boolean } = {},
  ): Promise<{ size: number; flags: number; replies: OptionReply[] }> {
    if (!opts.greeted) await this.handshake();
    if (opts.structured) {
      this.sendOption(OPT.STRUCTURED_REPLY);
      const r = await this.optionReply();
      if (r.type !== REP_ACK) throw new Error(`STRUCTURED_REPLY refused: ${r.type}`);
    }
    if (opts.meta) {
      this.sendOption(OPT.SET_META_CONTEXT, RawClient.metaData(name, ['base:allocation']));
      const rs = await this.optionReplies();
      if (rs[rs.length - 1].type !== REP_ACK) throw new Error('SET_META_CONTEXT refused');
    }
    this.sendOption(OPT.GO, RawClient.nameData(name, opts.blockSize ? [3] : []));
    const replies = await this.optionReplies();
    const last = replies[replies.length - 1];
    if (last.type !== REP_ACK) throw new Error(`GO refused: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exp = replies.find((r) => r.type === REP_INFO && r.data.readUInt16BE(0) === 0)!;
    return { size: Number(exp.data.readBigUInt64BE(2)), flags: exp.data.readUInt16BE(10), replies };
  }

  #cookie = 1n;
  /** Offset and length of each READ in flight, to place its structured chunks. */
  readonly #reads = new Map<bigint, { offset: number; length: number }>();

  /** Send one request (with `data` for WRITE) and return its cookie. */
  send(type: number, offset: number, length: number, flags = 0, data?: Buffer, magic = 0x25609513): bigint {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(magic, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    const cookie = this.#cookie++;
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    // Two writes, not one concatenation: a test sending the same large buffer many times keeps one copy.
    this.write(h);
    if (data) this.write(data);
    if (type === CMD.READ) this.#reads.set(cookie, { offset, length });
    return cookie;
  }

  /**
   * The reply to the next request, parsed: a simple reply (READ data of `readLength` when it
   * succeeded) or structured chunks up to the one flagged DONE.
   */
  async reply(readLength = 0): Promise<Reply & { cookie: bigint }> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === 0x67446698) {
      const rest = await this.read(12);
      const error = rest.readUInt32BE(0);
      const cookie = rest.readBigUInt64BE(4);
      const data = error === 0 && readLength > 0 ? await this.read(readLength) : Buffer.alloc(0);
      return { cookie, error, data, extents: [], message: '', holes: [], structured: false };
    }
    if (magic !== 0x668e33ef) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const out: Reply & { cookie: bigint } = { cookie: 0n, error: 0, data: Buffer.alloc(0), extents: [], message: '', holes: [], structured: true };
    let first = true;
    for (;;) {
      const h = first ? Buffer.concat([Buffer.from([0x66, 0x8e, 0x33, 0xef]), await this.read(16)]) : await this.read(20);
      first = false;
      const flags = h.readUInt16BE(4);
      const type = h.readUInt16BE(6);
      out.cookie = h.readBigUInt64BE(8);
      const payload = await this.read(h.readUInt32BE(16));
      if (type === 1 || type === 2) {
        // Place OFFSET_DATA (and zeros of OFFSET_HOLE) at their offset inside the read.
        const read = this.#reads.get(out.cookie)!;
        if (out.data.length !== read.length) out.data = Buffer.alloc(read.length);
        const at = Number(payload.readBigUInt64BE(0)) - read.offset;
        if (type === 1) payload.subarray(8).copy(out.data, at);
        else out.holes.push([at, payload.readUInt32BE(8)]);
      } else if (type === 5) {
        for (let i = 4; i < payload.length; i += 8) out.extents.push([payload.readUInt32BE(i), payload.readUInt32BE(i + 4)]);
      } else if (type >= 0x8000) {
        out.error = payload.readUInt32BE(0);
        out.message = payload.subarray(6, 6 + payload.readUInt16BE(4)).toString('utf8');
      }
      if (flags & 1) {
        this.#reads.delete(out.cookie);
        return out;
      }
    }
  }

  /** One request and its reply. */
  async request(type: number, offset: number, length: number, flags = 0, data?: Buffer): Promise<Reply> {
    this.send(type, offset, length, flags, data);
    return this.reply(type === CMD.READ ? length : 0);
  }
}
