/**
 * Option haggling (fixed newstyle), from the client's flags to the option that picks an export:
 * NBD_OPT_GO or NBD_OPT_EXPORT_NAME. What the client negotiated on the way (structured replies, the
 * base:allocation meta context, block sizes) is left on the Negotiation for the transmission phase.
 */
import {
  WireError,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeServerEntry,
} from './codec.js';
import type { ConnectionHost } from './connection.js';
import type { Export } from './export.js';
import { LockedExport } from './locked.js';
import { BASE_ALLOCATION, BASE_ALLOCATION_ID, Info, MAX_OPTION_BYTES, OPTION_HEADER_BYTES, Opt, Rep } from './protocol.js';

/** How a Negotiation reads and writes its connection. */
export interface NegotiationIo {
  read(n: number): Promise<Buffer>;
  discard(n: number): Promise<void>;
  /** Write replies; resolves once they left (never rejects). */
  send(bufs: Buffer[]): Promise<void>;
  /**
   * Upgrade the connection to TLS after STARTTLS was acknowledged; later reads and sends go through
   * it. Rejects if the handshake fails (the connection is then over). Absent: TLS is not configured.
   */
  startTls?(): Promise<void>;
}

export class Negotiation {
  /** The client set NBD_FLAG_C_NO_ZEROES. */
  readonly noZeroes: boolean;
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  structured = false;
  /** base:allocation was selected by SET_META_CONTEXT, for this export name. */
  metaExport: string | undefined;
  /** The client asked for NBD_INFO_BLOCK_SIZE in GO, so it promised to obey the minimum. */
  strictBlocks = false;
  /** The TLS handshake is done: options other than STARTTLS and ABORT are allowed from here. */
  tls = false;
  /** Why run() hung up without an export, when it was the server's choice (for the log). */
  hungUp: string | undefined;
  readonly #io: NegotiationIo;
  readonly #host: ConnectionHost;

  constructor(io: NegotiationIo, host: ConnectionHost, noZeroes: boolean) {
    this.#io = io;
    this.#host = host;
    this.noZeroes = noZeroes;
  }

  /** Options until GO or EXPORT_NAME picks an export (returned), or the client leaves (undefined). */
  async run(): Promise<Export | undefined> {
    for (;;) {
      const { option, length } = decodeOptionHeader(await this.#io.read(OPTION_HEADER_BYTES));
      if (length > MAX_OPTION_BYTES) {
        if (option === Opt.EXPORT_NAME) throw new WireError(`NBD_OPT_EXPORT_NAME of ${length} bytes`);
        await this.#io.discard(length);
        await this.#optReply(option, Rep.ERR_TOO_BIG, `option data of ${length} bytes is beyond the limit of ${MAX_OPTION_BYTES}`);
        continue;
      }
      const data = await this.#io.read(length);
      if (option === Opt.STARTTLS) {
        await this.#startTls(data);
        continue;
      }
      // TLS configured: it is required. Nothing about the exports leaks before the handshake.
      if (this.#io.startTls && !this.tls && option !== Opt.ABORT) {
        // NBD_OPT_EXPORT_NAME has no error reply: the only safe answer is to hang up.
        if (option === Opt.EXPORT_NAME) {
          this.hungUp = 'NBD_OPT_EXPORT_NAME before STARTTLS (TLS is required)';
          return undefined;
        }
        await this.#optReply(option, Rep.ERR_TLS_REQD, 'TLS is required by this server: send NBD_OPT_STARTTLS first');
        continue;
      }
      switch (option) {
        case Opt.EXPORT_NAME: {
          // No error reply exists for this option: an unknown, locked or busy export closes the connection.
          const exp = this.#host.findExport(data.toString('utf8'));
          if (exp instanceof LockedExport) {
            this.hungUp = `NBD_OPT_EXPORT_NAME of locked export ${exp.name} (${exp.reason})`;
            return undefined;
          }
          if (!exp || !exp.attachClient()) return undefined;
          await this.#io.send([encodeExportNameReply(exp.size, exp.transmissionFlags, this.noZeroes)]);
          return exp;
        }
        case Opt.ABORT:
          await this.#io.send([encodeOptionReply(option, Rep.ACK)]);
          return undefined;
        case Opt.LIST:
          await this.#list(option, data);
          break;
        case Opt.INFO:
        case Opt.GO: {
          const exp = await this.#infoOrGo(option, data);
          if (exp) return exp;
          break;
        }
        case Opt.STRUCTURED_REPLY:
          if (length !== 0) await this.#optReply(option, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          else {
            this.structured = true;
            await this.#io.send([encodeOptionReply(option, Rep.ACK)]);
          }
          break;
        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT:
          await this.#metaContext(option, data);
          break;
        default:
          await this.#optReply(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
      }
    }
  }

  async #startTls(data: Buffer): Promise<void> {
    const option = Opt.STARTTLS;
    if (!this.#io.startTls) return this.#optReply(option, Rep.ERR_UNSUP, 'TLS is not configured on this server (--tls-cert, --tls-key)');
    if (this.tls) return this.#optReply(option, Rep.ERR_INVALID, 'TLS is already on');
    if (data.length !== 0) return this.#optReply(option, Rep.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
    await this.#io.send([encodeOptionReply(option, Rep.ACK)]);
    await this.#io.startTls();
    this.tls = true;
  }

  #optReply(option: number, type: Rep, message: string): Promise<void> {
    return this.#io.send([encodeOptionError(option, type, message)]);
  }

  /**
   * The export a name asks for, or an ERR_UNKNOWN reply: for a name that is not there (naming no
   * other export under --no-list), and for a locked export ("disk locked: key K of provider P
   * unavailable: …", or only "disk locked" under --no-list).
   */
  async #lookup(option: number, name: string): Promise<Export | undefined> {
    const exp = this.#host.findExport(name);
    if (exp instanceof LockedExport) {
      await this.#optReply(option, Rep.ERR_UNKNOWN, exp.clientMessage(this.#host.noList));
      return undefined;
    }
    if (!exp) {
      const known = this.#host.noList
        ? ''
        : ` (exports: ${this.#host
            .exportList()
            .map((e) => e.name)
            .join(', ')})`;
      await this.#optReply(option, Rep.ERR_UNKNOWN, `no export named '${name}'${known}`);
    }
    return exp;
  }

  async #list(option: number, data: Buffer): Promise<void> {
    if (data.length !== 0) return this.#optReply(option, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data');
    if (this.#host.noList) return this.#optReply(option, Rep.ERR_POLICY, 'listing exports is disabled on this server');
    const replies = this.#host.exportList().map((e) => encodeOptionReply(option, Rep.SERVER, encodeServerEntry(e.name, e.description)));
    await this.#io.send([...replies, encodeOptionReply(option, Rep.ACK)]);
  }

  async #infoOrGo(option: number, data: Buffer): Promise<Export | undefined> {
    let req;
    try {
      req = decodeInfoRequest(data);
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      await this.#optReply(option, Rep.ERR_INVALID, err.message);
      return undefined;
    }
    const exp = await this.#lookup(option, req.name);
    if (!exp) return undefined;
    if (option === Opt.GO && !exp.attachClient()) {
      await this.#optReply(option, Rep.ERR_POLICY, `export ${exp.name} already has ${exp.shared} client(s), its limit (--shared)`);
      return undefined;
    }
    const replies = [encodeOptionReply(option, Rep.INFO, encodeInfoExport(exp.size, exp.transmissionFlags))];
    const asked = new Set(req.infos);
    if (asked.has(Info.NAME)) replies.push(encodeOptionReply(option, Rep.INFO, encodeInfoString(Info.NAME, exp.name)));
    if (asked.has(Info.DESCRIPTION)) replies.push(encodeOptionReply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, exp.description)));
    if (asked.has(Info.BLOCK_SIZE)) replies.push(encodeOptionReply(option, Rep.INFO, encodeInfoBlockSize(exp.blockSizes)));
    replies.push(encodeOptionReply(option, Rep.ACK));
    await this.#io.send(replies);
    if (option !== Opt.GO) return undefined;
    this.strictBlocks = asked.has(Info.BLOCK_SIZE);
    // A meta context chosen for another export does not carry over.
    if (this.metaExport !== undefined && this.metaExport !== req.name) this.metaExport = undefined;
    return exp;
  }

  async #metaContext(option: number, data: Buffer): Promise<void> {
    if (option === Opt.SET_META_CONTEXT && !this.structured) {
      return this.#optReply(option, Rep.ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first');
    }
    let req;
    try {
      req = decodeMetaContextRequest(data);
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      return this.#optReply(option, Rep.ERR_INVALID, err.message);
    }
    if (!(await this.#lookup(option, req.name))) return;
    const replies: Buffer[] = [];
    // LIST with no query, or a query of the whole "base:" namespace, lists every context we have.
    const match = option === Opt.LIST_META_CONTEXT ? (q: string) => q === BASE_ALLOCATION || q === 'base:' : (q: string) => q === BASE_ALLOCATION;
    const selected = option === Opt.LIST_META_CONTEXT && req.queries.length === 0 ? true : req.queries.some(match);
    if (selected)
      replies.push(encodeOptionReply(option, Rep.META_CONTEXT, encodeMetaContext(option === Opt.SET_META_CONTEXT ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION)));
    if (option === Opt.SET_META_CONTEXT) this.metaExport = selected ? req.name : undefined;
    replies.push(encodeOptionReply(option, Rep.ACK));
    await this.#io.send(replies);
  }
}
