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
  #pending: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  readonly #detach: () => void;

  constructor(socket: Socket) {
    this.#socket = socket;
    const onData = (d: Buffer): void => {
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

  /** Exactly `n` bytes, or EndOfStream. One read at a time. */
  read(n: number): Promise<Buffer> {
    if (this.#pending) return Promise.reject(new Error('SocketReader: one read at a time'));
    return new Promise((resolve, reject) => {
      this.#pending = { n, resolve, reject };
      this.#serve();
    });
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
    if (p && this.#size >= p.n) {
      this.#pending = undefined;
      p.resolve(this.#take(p.n));
    } else if (p && this.#ended) {
      this.#pending = undefined;
      p.reject(new EndOfStream());
    } else if (p && this.#socket.isPaused()) {
      this.#socket.resume(); // waiting for more than is buffered
    }
  }

  #take(n: number): Buffer {
    let out: Buffer;
    const first = this.#chunks[0];
    if (n === 0) out = Buffer.alloc(0);
    else if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.#chunks.shift();
      else this.#chunks[0] = first.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let at = 0;
      while (at < n) {
        const c = this.#chunks[0];
        const k = Math.min(c.length, n - at);
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
