/**
 * One client connection: the fixed-newstyle handshake, option haggling, then the transmission
 * phase. Requests are read one after the other and served concurrently (replies may leave out of
 * order, as NBD allows); every request gets a reply — an error reply for anything malformed, out of
 * range or unsupported — and only a broken stream (wrong magic, bad client flags) ends the
 * connection. Payload memory is taken from the host's PayloadBudget before it is read or allocated.
 */
import type { Socket } from 'node:net';
import type { PayloadBudget } from './budget.js';
import { POOLED_MIN, type BufferPool } from './buffers.js';
import {
  WireError,
  decodeRequest,
  encodeBlockStatus,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeStructuredDone,
  encodeSimpleReply,
  encodeStructuredError,
  type Request,
} from './codec.js';
import type { Export } from './export.js';
import type { ExportEntry } from './locked.js';
import {
  BASE_ALLOCATION_ID,
  Cmd,
  MAX_PAYLOAD,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NbdErrno,
  REQUEST_BYTES,
} from './protocol.js';
import { EndOfStream, SocketReader } from './reader.js';
import { Negotiation } from './negotiate.js';
import { upgradeToTls, type TlsServerContext } from './tls.js';

/** What a connection needs from its host. */
export interface ConnectionHost {
  /** The export of that name ('' is the default export when there is exactly one); it may be locked. */
  findExport(name: string): ExportEntry | undefined;
  exportList(): ExportEntry[];
  /** --no-list: NBD_OPT_LIST is refused and unknown names learn nothing of the others. */
  readonly noList: boolean;
  readonly budget: PayloadBudget;
  /** Large payload buffers, reused (see buffers.ts). */
  readonly buffers: BufferPool;
  /** A connection that has not picked an export after this long is closed (it holds a socket for nothing). */
  readonly handshakeTimeoutMs: number;
  /**
   * A connection whose replies have not moved for this long, while it holds budget others wait
   * for, is closed (see #watchStalls).
   */
  readonly stallTimeoutMs: number;
  /** TLS credentials: when set, TLS is required (STARTTLS before any other option). */
  readonly tls?: TlsServerContext;
  log(line: string): void;
}

/**
 * A request's share of the payload budget, released once: a READ's reply buffer when its reply
 * left; everything else (a WRITE's data, scratch buffers of src/disk) as soon as the disk is done
 * with it, before the reply is queued; or when the request ends without a reply.
 */
interface Ticket {
  held: number;
  queued: boolean;
}

/** Holes smaller than this are sent as data: a chunk header costs more than a few zeros. */
const MIN_HOLE_CHUNK = 4096;

/** A structured read reply in chunks: OFFSET_DATA for data, OFFSET_HOLE for holes, then a final NONE. */
function readChunks(req: Request, data: Buffer, holes: ReadonlyArray<{ offset: number; length: number }>): Buffer[] {
  const out: Buffer[] = [];
  let at = req.offset;
  const dataUpTo = (end: number): void => {
    if (end <= at) return;
    out.push(encodeOffsetDataHeader(req.cookie, at, end - at, false), data.subarray(at - req.offset, end - req.offset));
  };
  for (const h of holes) {
    dataUpTo(h.offset);
    out.push(encodeOffsetHole(req.cookie, h.offset, h.length));
    at = h.offset + h.length;
  }
  dataUpTo(req.offset + req.length);
  out.push(encodeStructuredDone(req.cookie));
  return out;
}

/** Requests in flight per connection before it stops reading more. */
const MAX_IN_FLIGHT = 64;
/** Payload bytes one connection may hold before it stops reading more (one request may exceed it). */
const CONNECTION_BYTES = 16 * 1024 * 1024;

export class Connection {
  readonly id: number;
  readonly peer: string;
  /** Settles when the connection is over (its in-flight requests answered or dropped). */
  readonly done: Promise<void>;
  /** The client's socket; after STARTTLS, the TLS socket over it. */
  #socket: Socket;
  #reader: SocketReader;
  readonly #host: ConnectionHost;
  #structured = false;
  /** base:allocation selected by SET_META_CONTEXT, for that export name. */
  #metaExport: string | undefined;
  #export: Export | undefined;
  /** The client asked for NBD_INFO_BLOCK_SIZE in GO, so it promised to obey the minimum. */
  #strictBlocks = false;
  /** Requests being served (until their reply is queued on the socket). */
  readonly #inFlight = new Set<Promise<void>>();
  /** Replies queued on the socket and not yet handed to the kernel. */
  readonly #sending = new Set<Promise<void>>();
  /** Payload bytes of the budget this connection holds. */
  #held = 0;
  #stopping = false;
  /** The socket is corked until the next check phase (see #corkUntilImmediate). */
  #corked = false;
  /** Between STARTTLS's ACK and the end of the TLS handshake. */
  #upgrading = false;
  /**
   * Waits cut short by stop(). Each is removed when its promise settles: a race against one
   * long-lived "stopped" promise would leave a reaction on it per request, which a connection
   * serving a VM for days would pile up without bound.
   */
  readonly #stopWaiters = new Set<() => void>();
  /** Replies that finished leaving for the kernel: the progress #watchStalls looks for. */
  #repliesSent = 0;
  /** This connection waits in the budget's queue itself (it does not count among the others it blocks). */
  #waitingForBudget = false;
  /** Why the server closed the connection itself (a stalled client), for the closing log line. */
  #cutOffReason: string | undefined;
  /** Wakes #transmit when a request or a reply finished, or on stop. */
  #wakeProgress: (() => void) | undefined;

  constructor(socket: Socket, host: ConnectionHost, id: number) {
    this.id = id;
    this.#socket = socket;
    this.#host = host;
    this.peer = socket.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix socket';
    socket.setNoDelay?.(true);
    this.#reader = new SocketReader(socket);
    this.done = this.#run();
  }

  /** Stop reading requests; the ones in flight are still answered, then the socket closes. */
  stop(): void {
    this.#stopping = true;
    for (const wake of this.#stopWaiters) wake();
    this.#stopWaiters.clear();
    this.#progress();
    this.#reader.end();
    // A client stalling its TLS handshake has no reader to end: cut it off (nothing is in flight yet).
    if (this.#upgrading) this.#socket.destroy();
  }

  async #run(): Promise<void> {
    let reason = 'client disconnected';
    let timedOut = false;
    let stopWatching: (() => void) | undefined;
    const handshakeTimer = setTimeout(() => {
      timedOut = true;
      // Nothing is in flight before an export is chosen: drop the socket (also if our replies are stuck in it).
      this.#reader.end();
      this.#socket.destroy();
    }, this.#host.handshakeTimeoutMs);
    handshakeTimer.unref();
    try {
      this.#socket.write(encodeGreeting());
      const clientFlags = (await this.#reader.read(4)).readUInt32BE(0);
      if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
        reason = `unknown client flags 0x${clientFlags.toString(16)}`;
        return;
      }
      const negotiation = new Negotiation(
        {
          read: (n) => this.#reader.read(n),
          discard: (n) => this.#reader.discard(n),
          send: (bufs) => this.#send(bufs),
          ...(this.#host.tls ? { startTls: () => this.#startTls(this.#host.tls!) } : {}),
        },
        this.#host,
        (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0,
      );
      const exp = await negotiation.run();
      clearTimeout(handshakeTimer);
      if (!exp) {
        if (negotiation.hungUp !== undefined) reason = negotiation.hungUp;
        return;
      }
      this.#structured = negotiation.structured;
      this.#metaExport = negotiation.metaExport;
      this.#strictBlocks = negotiation.strictBlocks;
      this.#export = exp;
      this.#host.log(`connection ${this.id} (${this.peer}): serving export ${exp.name}`);
      stopWatching = this.#watchStalls();
      reason = await this.#transmit();
    } catch (err) {
      if (timedOut) reason = `no export chosen within ${this.#host.handshakeTimeoutMs} ms`;
      else if (this.#stopping) reason = 'server stopping';
      else if (err instanceof WireError) reason = `protocol error: ${err.message}`;
      else if (!(err instanceof EndOfStream)) reason = `error: ${(err as Error).message}`;
    } finally {
      clearTimeout(handshakeTimer);
      stopWatching?.();
      if (this.#cutOffReason !== undefined) reason = this.#cutOffReason;
      await Promise.allSettled([...this.#inFlight]);
      if (this.#export) this.#export.detachClient();
      this.#socket.end();
      // Shutting down: a client that does not read its replies is not waited for.
      if (this.#stopping && this.#sending.size > 0) this.#socket.destroy();
      this.#host.log(`connection ${this.id} (${this.peer}) closed: ${reason}`);
    }
  }

  /** Hand the socket to a TLS session (STARTTLS was acknowledged) and read and write through it from now on. */
  async #startTls(tls: TlsServerContext): Promise<void> {
    // The client must wait for our ACK before its handshake: bytes already here were sent in plaintext.
    if (this.#reader.buffered > 0) throw new WireError('data sent after NBD_OPT_STARTTLS before its reply');
    this.#reader.detach();
    this.#upgrading = true;
    try {
      this.#socket = await upgradeToTls(this.#socket, tls);
    } finally {
      this.#upgrading = false;
    }
    this.#reader = new SocketReader(this.#socket);
    if (this.#stopping) this.#reader.end();
    this.#host.log(`connection ${this.id} (${this.peer}): TLS on${tls.clientAuth ? ', client certificate verified' : ''}`);
  }

  /**
   * Write `bufs` in one go; resolves once they reached the kernel, or when the connection is stopped
   * (a client that does not read would otherwise keep a negotiation or a shutdown waiting forever).
   */
  #send(bufs: Buffer[], onWritten?: () => void): Promise<void> {
    const written = new Promise<void>((resolve) => {
      if (this.#socket.destroyed) {
        onWritten?.();
        return resolve();
      }
      this.#corkUntilImmediate();
      for (let i = 0; i < bufs.length - 1; i++) this.#socket.write(bufs[i]);
      // Called once the socket no longer needs the buffers (written, or dropped with the socket).
      this.#socket.write(bufs[bufs.length - 1], () => {
        onWritten?.();
        resolve();
      });
    });
    return this.#orStop(written);
  }

  /**
   * Hold the socket's writes until the event loop's check phase: the replies of every request that
   * completed in this turn of the loop (a burst, at queue depth 16) leave in one writev instead of
   * one system call each.
   */
  #corkUntilImmediate(): void {
    if (this.#corked) return;
    this.#corked = true;
    const socket = this.#socket; // STARTTLS may replace #socket before the uncork
    socket.cork();
    setImmediate(() => {
      this.#corked = false;
      socket.uncork();
    });
  }

  /**
   * The send-stall timeout. A client that never reads its replies stops being read from once it
   * holds its own share (MAX_IN_FLIGHT, CONNECTION_BYTES), but the share stays pinned: a few such
   * clients together spend the whole budget and every other client waits. So when others wait for
   * the budget and this connection holds some of it while its replies have not moved for
   * stallTimeoutMs — no reply finished leaving and the socket's queue did not shrink — it is closed
   * and its budget released. A real NBD client reads its replies continuously, so only a dead or
   * hostile one is cut off; a merely slow one still moves bytes. Chosen over reserving a part of the
   * budget for connections with nothing unsent, which would need the budget to track every
   * connection's unsent bytes and re-sort its waiters whenever one drains, and still leave the
   * stalled clients' memory pinned forever.
   */
  #watchStalls(): () => void {
    const limit = this.#host.stallTimeoutMs;
    let sent = this.#repliesSent;
    let queued = this.#socket.writableLength;
    let movedAt = Date.now();
    const timer = setInterval(
      () => {
        const nowQueued = this.#socket.writableLength;
        if (this.#sending.size === 0 || this.#repliesSent !== sent || nowQueued < queued) movedAt = Date.now();
        sent = this.#repliesSent;
        queued = nowQueued;
        if (this.#stopping || this.#held === 0 || Date.now() - movedAt < limit) return;
        const others = this.#host.budget.waiting - (this.#waitingForBudget ? 1 : 0);
        if (others <= 0) return;
        this.#cutOffReason = `replies unread for ${limit} ms while other requests wait for the payload budget (${this.#held} bytes held)`;
        this.stop();
        this.#socket.destroy(); // the unsent replies' write callbacks fire now, which releases their budget
      },
      // Checked a few times per timeout, at least every second for long ones.
      Math.max(10, Math.min(1000, Math.floor(limit / 4))),
    );
    timer.unref();
    return () => clearInterval(timer);
  }

  // ---- transmission ----------------------------------------------------------------------------

  /** Serve requests until DISC or the end of the stream; returns why it ended. */
  async #transmit(): Promise<string> {
    const exp = this.#export!;
    for (;;) {
      // Backpressure: a client that does not read its replies stops being read from.
      for (;;) {
        const busy = this.#inFlight.size + this.#sending.size;
        if (this.#stopping || (busy < MAX_IN_FLIGHT && (this.#held < CONNECTION_BYTES || busy === 0))) break;
        await new Promise<void>((resolve) => (this.#wakeProgress = resolve));
      }
      let req: Request;
      try {
        req = decodeRequest(await this.#reader.read(REQUEST_BYTES));
      } catch (err) {
        if (err instanceof EndOfStream) return this.#stopping ? 'server stopping' : 'client disconnected';
        throw err;
      }
      if (req.type === Cmd.DISC) {
        await Promise.allSettled([...this.#inFlight]);
        return 'client sent NBD_CMD_DISC';
      }
      let payload: Buffer | undefined;
      let held = 0;
      if (req.type === Cmd.WRITE) {
        if (req.length > MAX_PAYLOAD) {
          // The data must still be consumed to stay in step with the stream.
          await this.#reader.discard(req.length);
          this.#replyError(req, NbdErrno.EOVERFLOW, `a write of ${req.length} bytes is beyond the maximum of ${MAX_PAYLOAD}`);
          continue;
        }
        // The data, and the buffer src/disk may assemble units in (none for an aligned flat write: in place).
        held = req.length + exp.scratchBytes('write', req.offset, req.length);
        await this.#acquire(held);
        try {
          payload = await (req.length >= POOLED_MIN ? this.#reader.readInto(this.#host.buffers.take(req.length)) : this.#reader.read(req.length));
        } catch (err) {
          // A payload cut short by the client: its share of the budget must not leak.
          this.#release(held);
          throw err;
        }
      } else if (req.type === Cmd.READ && req.length <= MAX_PAYLOAD && this.#check(exp, req) === undefined) {
        held = req.length + exp.scratchBytes('read', req.offset, req.length);
        if (held > 0) await this.#acquire(held);
      } else if (req.type === Cmd.WRITE_ZEROES && this.#check(exp, req) === undefined) {
        held = exp.scratchBytes('zero', req.offset, req.length);
        await this.#acquire(held);
      }
      const ticket = { held, queued: false };
      this.#track(
        this.#serve(exp, req, payload, ticket).finally(() => {
          if (!ticket.queued) this.#release(ticket.held);
        }),
      );
    }
  }

  /**
   * Take `bytes` of the budget, or throw EndOfStream when the connection is stopped while waiting
   * (the budget may be held by a client that never reads, which only stopping releases). A grant
   * that comes after the stop is given back at once.
   */
  async #acquire(bytes: number): Promise<void> {
    // The common case, without a promise per request.
    if (!this.#stopping && this.#host.budget.tryAcquire(bytes)) {
      this.#held += bytes;
      return;
    }
    let got = false;
    let abandoned = false;
    this.#waitingForBudget = true;
    const granted = this.#host.budget.acquire(bytes).then(() => {
      got = true;
      if (abandoned) this.#host.budget.release(bytes);
    });
    await this.#orStop(granted);
    this.#waitingForBudget = false;
    if (this.#stopping) {
      // Give the grant back now if it came, or as soon as it comes.
      if (got) this.#host.budget.release(bytes);
      else abandoned = true;
      throw new EndOfStream();
    }
    this.#held += bytes;
  }

  #release(bytes: number): void {
    this.#held -= bytes;
    this.#host.budget.release(bytes);
  }

  #track(p: Promise<void>): void {
    const tracked = p.catch(() => undefined);
    this.#inFlight.add(tracked);
    void tracked.finally(() => {
      this.#inFlight.delete(tracked);
      this.#progress();
    });
  }

  /** Wake #transmit if it waits for room (a request or reply finished, or the connection stops). */
  #progress(): void {
    const wake = this.#wakeProgress;
    this.#wakeProgress = undefined;
    wake?.();
  }

  /** Resolves when `p` settles or the connection is stopped, whichever comes first. */
  #orStop(p: Promise<void>): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.#stopWaiters.add(resolve);
      const done = (): void => {
        this.#stopWaiters.delete(resolve);
        resolve();
      };
      p.then(done, done);
    });
  }

  /** The NBD error a request gets before any I/O, with a message; undefined when it may run. */
  #check(exp: Export, req: Request): [NbdErrno, string] | undefined {
    const { type, offset, length } = req;
    const writes = type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
    switch (type) {
      case Cmd.READ:
      case Cmd.WRITE:
      case Cmd.TRIM:
      case Cmd.WRITE_ZEROES:
      case Cmd.BLOCK_STATUS:
        break;
      case Cmd.FLUSH:
        return undefined;
      default:
        return [NbdErrno.EINVAL, `command ${type} is not supported`];
    }
    if (writes && exp.readOnly) return [NbdErrno.EPERM, `export ${exp.name} is read-only`];
    if (type === Cmd.READ && length > MAX_PAYLOAD) return [NbdErrno.EOVERFLOW, `a read of ${length} bytes is beyond the maximum of ${MAX_PAYLOAD}`];
    if (type === Cmd.BLOCK_STATUS) {
      if (!this.#structured || this.#metaExport === undefined)
        return [NbdErrno.EINVAL, 'NBD_CMD_BLOCK_STATUS needs structured replies and the base:allocation meta context'];
      if (length === 0) return [NbdErrno.EINVAL, 'NBD_CMD_BLOCK_STATUS of 0 bytes'];
    }
    if (offset + length > exp.size) {
      const errno = type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
      return [errno, `${length} bytes at offset ${offset} go past the end of the export (${exp.size} bytes)`];
    }
    const min = exp.blockSizes.minimum;
    if (this.#strictBlocks && (offset % min !== 0 || length % min !== 0)) {
      return [NbdErrno.EINVAL, `${length} bytes at offset ${offset} are not aligned to the minimum block size ${min} the client agreed to`];
    }
    return undefined;
  }

  /** Serve one request and queue its reply; the payload budget of `ticket` is released once the reply left. */
  async #serve(exp: Export, req: Request, payload: Buffer | undefined, ticket: Ticket): Promise<void> {
    const refused = this.#check(exp, req);
    if (refused) return this.#replyError(req, refused[0], refused[1], ticket);
    const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
    try {
      switch (req.type) {
        case Cmd.READ: {
          // Holes first, data second: a write landing in between shows as the read having come first.
          const holes = this.#structured ? await exp.holes(req.offset, req.length, MIN_HOLE_CHUNK) : [];
          const data = this.#host.buffers.take(req.length);
          // Not given back if the read fails: a part of it may still be in flight into the buffer.
          await exp.read(req.offset, data);
          this.#keepOnly(ticket, data.length); // src/disk's scratch is gone; the reply buffer stays until sent
          const reuse = (): void => this.#host.buffers.give(data);
          if (!this.#structured) return this.#queueReply([encodeSimpleReply(req.cookie, 0), data], ticket, reuse);
          if (holes.length === 0) return this.#queueReply([encodeOffsetDataHeader(req.cookie, req.offset, data.length), data], ticket, reuse);
          return this.#queueReply(readChunks(req, data, holes), ticket, reuse);
        }
        case Cmd.WRITE:
          await exp.write(req.offset, payload!, fua);
          this.#host.buffers.give(payload!); // only after success: a failed write may still be reading it
          break;
        case Cmd.FLUSH:
          await exp.flush();
          break;
        case Cmd.TRIM:
          await exp.trim(req.offset, req.length, fua);
          break;
        case Cmd.WRITE_ZEROES: {
          const fast = (req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0;
          const noHole = (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0;
          if ((await exp.zero(req.offset, req.length, { fua, fast, noHole })) === 'slow') {
            return this.#replyError(req, NbdErrno.ENOTSUP, 'zeroing this range means writing it (flat or encrypted data): no fast zero', ticket);
          }
          break;
        }
        case Cmd.BLOCK_STATUS: {
          const extents = await exp.extents(req.offset, req.length, (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0);
          return this.#queueReply([encodeBlockStatus(req.cookie, BASE_ALLOCATION_ID, extents)], ticket);
        }
      }
      this.#keepOnly(ticket, 0); // the data was written: a 16-byte reply pins nothing worth counting
      this.#queueReply([encodeSimpleReply(req.cookie, 0)], ticket);
    } catch (err) {
      const code = (err as { code?: string; cause?: { code?: string } }).cause?.code ?? (err as { code?: string }).code;
      const errno = code === 'ENOSPC' ? NbdErrno.ENOSPC : NbdErrno.EIO;
      this.#host.log(
        `connection ${this.id} (${this.peer}): ${Cmd[req.type] ?? req.type} of ${req.length} bytes at ${req.offset} failed: ${(err as Error).message}`,
      );
      this.#replyError(req, errno, (err as Error).message, ticket);
    }
  }

  /** Give back what `ticket` holds beyond `bytes` (buffers the request no longer uses). */
  #keepOnly(ticket: Ticket, bytes: number): void {
    if (ticket.held <= bytes) return;
    this.#release(ticket.held - bytes);
    ticket.held = bytes;
  }

  #replyError(req: Request, errno: NbdErrno, message: string, ticket: Ticket = { held: 0, queued: false }): void {
    this.#keepOnly(ticket, 0); // an error reply carries no payload
    this.#queueReply([this.#structured ? encodeStructuredError(req.cookie, errno, message) : encodeSimpleReply(req.cookie, errno)], ticket);
  }

  /** Queue a reply without waiting for the client to read it; its budget is released when it left. */
  #queueReply(bufs: Buffer[], ticket: Ticket, onWritten?: () => void): void {
    ticket.queued = true;
    const sent = this.#send(bufs, onWritten).finally(() => {
      this.#repliesSent++;
      this.#sending.delete(sent);
      this.#progress();
      this.#release(ticket.held);
    });
    this.#sending.add(sent);
  }
}
