/**
 * Exact-length reads from a socket, with backpressure: the reader buffers at most HIGH_WATER bytes
 * (or the one read it is waiting for) and pauses the socket beyond that, so a client that sends
 * faster than the server works cannot make it hold more than that per connection.
 */
import type { Socket } from 'node:net';

/** The peer closed (or the connection failed) before the bytes asked for arrived. */
export class EndOfStream extends Error {
  constructor() {
    super('the connection closed');
  }
}

const HIGH_WATER = 256 * 1024;

export class SocketReader {
  readonly #socket: Socket;
  readonly #chunks: Buffer[] = [];
  #size = 0;
  #ended = false;
  #pending: { n: number; into: Buffer | undefined; filled: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  readonly #detach: () => void;

  constructor(socket: Socket) {
    this.#socket = socket;
    const onData = (d: Buffer): void => {
      const p = this.#pending;
      if (p?.into && this.#size === 0) {
        // Straight into the target: a large payload is not held twice (chunks, then the copy).
        const k = Math.min(d.length, p.n - p.filled);
        d.copy(p.into, p.filled, 0, k);
        p.filled += k;
        if (k === d.length) {
          this.#serve();
          return;
        }
        d = d.subarray(k);
      }
      this.#chunks.push(d);
      this.#size += d.length;
      if (this.#size >= Math.max(HIGH_WATER, this.#pending?.n ?? 0)) socket.pause();
      this.#serve();
    };
    socket.on('data', onData);
    const end = (): void => this.end();
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
    this.#detach = () => {
      socket.removeListener('data', onData);
      socket.removeListener('end', end);
      socket.removeListener('close', end);
      socket.removeListener('error', end);
    };
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.#size;
  }

  /**
   * Stop listening to the socket, which another reader takes over (STARTTLS hands it to TLS). The
   * socket is left paused, so no byte is lost between the two.
   */
  detach(): void {
    this.#socket.pause();
    this.#detach();
  }

  /** Stop: a pending and every later read fails with EndOfStream (what is buffered is dropped). */
  end(): void {
    this.#ended = true;
    this.#chunks.length = 0;
    this.#size = 0;
    this.#serve();
  }

  /**
   * Exactly `n` bytes, or EndOfStream. One read at a time. Without `into` the bytes may share
   * memory with the socket's chunks (cheap for small reads); with it they are copied into `into`
   * (n = into.length), which is what resolves.
   */
  read(n: number, into?: Buffer): Promise<Buffer> {
    if (this.#pending) return Promise.reject(new Error('SocketReader: one read at a time'));
    return new Promise((resolve, reject) => {
      this.#pending = { n, into, filled: 0, resolve, reject };
      this.#serve();
    });
  }

  /** Fill `target` from the stream. */
  readInto(target: Buffer): Promise<Buffer> {
    return this.read(target.length, target);
  }

  /** Read and drop `n` bytes (the payload of a request refused before its data was needed). */
  async discard(n: number): Promise<void> {
    while (n > 0) {
      const k = Math.min(n, HIGH_WATER);
      await this.read(k);
      n -= k;
    }
  }

  #serve(): void {
    const p = this.#pending;
    if (p?.into && this.#size > 0 && this.#size < p.n - p.filled) {
      // Move what is buffered into the target now; the rest comes straight from the socket.
      const k = this.#size;
      this.#take(k, p.into, p.filled);
      p.filled += k;
    }
    if (p && this.#size >= p.n - p.filled) {
      this.#pending = undefined;
      p.resolve(this.#take(p.n - p.filled, p.into, p.filled));
    } else if (p && this.#ended) {
      this.#pending = undefined;
      p.reject(new EndOfStream());
    } else if (p && this.#socket.isPaused()) {
      this.#socket.resume(); // waiting for more than is buffered
    }
  }

  /** The next `n` bytes: into `into` from `at` on when given (which is returned), else a buffer. */
  #take(n: number, into: Buffer | undefined, at = 0): Buffer {
    let out: Buffer;
    const first = this.#chunks[0];
    if (n === 0) out = into ?? Buffer.alloc(0);
    else if (first.length >= n && !into) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = into ?? Buffer.allocUnsafe(n);
      const end = at + n;
      while (at < end) {
        const c = this.#chunks[0];
        const k = Math.min(c.length, end - at);
        c.copy(out, at, 0, k);
        at += k;
        if (k === c.length) this.#chunks.shift();
        else this.#chunks[0] = c.subarray(k);
      }
    }
    this.#size -= n;
    if (!this.#ended && this.#size < HIGH_WATER && this.#socket.isPaused()) this.#socket.resume();
    return out;
  }
}
