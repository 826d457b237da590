/**
 * Ordering of overlapping writes without serializing the rest: each writer locks the range of data
 * units (or grains) it touches and waits for every earlier writer whose range overlaps its own, in
 * the order they asked. Writers of disjoint ranges run at once. Ranges are half-open [start, end)
 * in whatever unit the caller chooses; a whole-disk lock is [0, Infinity).
 */
interface Holder {
  readonly start: number;
  readonly end: number;
  readonly released: Promise<void>;
}

export class RangeLock {
  /** Holders and waiters, in the order they asked (a Set iterates in insertion order). */
  readonly #holders = new Set<Holder>();

  /** Resolves with the release function once every earlier overlapping holder has released. */
  async lock(start: number, end: number): Promise<() => void> {
    const before: Array<Promise<void>> = [];
    for (const h of this.#holders) if (h.start < end && start < h.end) before.push(h.released);
    let release!: () => void;
    const holder: Holder = { start, end, released: new Promise<void>((r) => (release = r)) };
    this.#holders.add(holder);
    if (before.length > 0) await Promise.all(before);
    return () => {
      this.#holders.delete(holder);
      release();
    };
  }

  /** Run `fn` holding [start, end). */
  async run<T>(start: number, end: number, fn: () => Promise<T>): Promise<T> {
    const release = await this.lock(start, end);
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Holders and waiters now (for tests). */
  get size(): number {
    return this.#holders.size;
  }
}
