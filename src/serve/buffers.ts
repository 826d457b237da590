/**
 * Reused buffers for large request and reply payloads (WRITE data, READ replies of 1 MiB and more).
 * Allocating and dropping a fresh 32 MiB buffer per request leaves the freed memory to the garbage
 * collector and to malloc, whose arenas keep it: the process grows far past what the payload
 * budget allows at any one time. Buffers here are sized in whole MiB and kept on free lists, at
 * most `keep` bytes of them idle; the budget bounds those in use.
 *
 * They are the XTS addon's own memory (allocateCipherBuffer), which its thread pool encrypts and
 * decrypts in place. Any other buffer is copied, per call, into a block the addon allocates for the
 * job and back when it is done: with 1 MiB payloads that was a second, malloc'd copy of every
 * payload the cipher had queued (up to the whole budget), plus what malloc kept of those blocks —
 * 278 MiB peak RSS instead of about 170 in the serve benchmark's memory run. The addon maps these
 * from the kernel, zero-filled, and unmaps them once collected, so dropped ones do not stay with
 * malloc either.
 */
import { allocateCipherBuffer } from '../xts/index.js';

const CLASS = 1024 * 1024;

/** Payloads smaller than this use ordinary allocations (small buffers come from V8's pools). */
export const POOLED_MIN = CLASS;

export class BufferPool {
  readonly keep: number;
  /** Idle buffers by capacity, most recently returned last. */
  readonly #free = new Map<number, Buffer[]>();
  #idle = 0;

  constructor(keep: number) {
    this.keep = keep;
  }

  /** Bytes of idle buffers held now. */
  get idle(): number {
    return this.#idle;
  }

  /** A buffer of exactly `n` bytes (its contents are stale: the caller fills all of it). */
  take(n: number): Buffer {
    if (n < POOLED_MIN) return Buffer.allocUnsafe(n);
    const capacity = Math.ceil(n / CLASS) * CLASS;
    const list = this.#free.get(capacity);
    const buf = list?.pop();
    if (buf) {
      this.#idle -= capacity;
      return buf.subarray(0, n);
    }
    // Make room first: idle buffers of other sizes go before a new one is allocated.
    this.#evict(Math.max(0, this.keep - capacity));
    return allocateCipherBuffer(capacity).subarray(0, n);
  }

  /**
   * Give back a buffer from take() once nothing uses it any more (a reply buffer only after the
   * socket's write callback: the kernel may still be reading it before).
   */
  give(buf: Buffer): void {
    const capacity = buf.buffer.byteLength;
    if (buf.length < POOLED_MIN || buf.byteOffset !== 0 || capacity % CLASS !== 0) return;
    if (capacity > this.keep) return;
    this.#evict(this.keep - capacity);
    const whole = Buffer.from(buf.buffer, 0, capacity);
    const list = this.#free.get(capacity);
    if (list) list.push(whole);
    else this.#free.set(capacity, [whole]);
    this.#idle += capacity;
  }

  /** Drop idle buffers (largest classes first) until at most `target` bytes are idle. */
  #evict(target: number): void {
    if (this.#idle <= target) return;
    const sizes = [...this.#free.keys()].sort((a, b) => b - a);
    for (const size of sizes) {
      const list = this.#free.get(size)!;
      while (list.length > 0 && this.#idle > target) {
        list.pop();
        this.#idle -= size;
      }
      if (list.length === 0) this.#free.delete(size);
      if (this.#idle <= target) return;
    }
  }
}
