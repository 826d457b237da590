/**
 * The global payload budget: bytes of request and reply payloads held in memory at once, over all
 * connections. A connection acquires a request's payload size before it reads a WRITE's data or
 * reads a READ's data from the disk, and releases it when the reply has left for the kernel. While
 * the budget is spent, connections stop reading their sockets (the kernel's TCP/Unix-socket flow
 * control then slows the clients down), so memory stays bounded however many clients push.
 * Budget held by clients that never read their replies is won back by the connections' send-stall
 * timeout (connection.ts), not here: the budget does not know who holds what.
 */
export class PayloadBudget {
  readonly limit: number;
  #used = 0;
  readonly #waiters: Array<{ bytes: number; grant: () => void }> = [];

  constructor(limit: number) {
    this.limit = limit;
  }

  get used(): number {
    return this.#used;
  }

  /** Requests waiting for room (what a connection stuck on a client that does not read keeps waiting). */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Take `bytes` now if they fit and nobody waits; false otherwise (then acquire() and wait). */
  tryAcquire(bytes: number): boolean {
    if (this.#waiters.length > 0 || !this.#fits(bytes)) return false;
    this.#used += bytes;
    return true;
  }

  /** Wait until `bytes` fit (a request larger than the whole budget waits for an empty budget). */
  acquire(bytes: number): Promise<void> {
    if (this.#waiters.length === 0 && this.#fits(bytes)) {
      this.#used += bytes;
      return Promise.resolve();
    }
    // First come, first served: a large request is not starved by a stream of small ones.
    return new Promise((resolve) => this.#waiters.push({ bytes, grant: resolve }));
  }

  release(bytes: number): void {
    this.#used -= bytes;
    while (this.#waiters.length > 0 && this.#fits(this.#waiters[0].bytes)) {
      const w = this.#waiters.shift()!;
      this.#used += w.bytes;
      w.grant();
    }
  }

  #fits(bytes: number): boolean {
    return this.#used === 0 || this.#used + bytes <= this.limit;
  }
}
