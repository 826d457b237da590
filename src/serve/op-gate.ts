/**
 * Admission of an export's requests while its disk is being replaced (a live snapshot). Requests
 * come in two kinds: writes (WRITE, WRITE_ZEROES, TRIM), which change the disk, and reads (READ,
 * BLOCK_STATUS, FLUSH), which do not. A replacement first closes the gate to writes and waits for
 * the writes in flight (the old disk then holds everything that was acknowledged, and stops
 * changing); reads go on against the old disk meanwhile. Just before the switch it closes the gate
 * to reads too and waits for those in flight, so that no request still uses the old disk when it is
 * closed. Requests that arrive while the gate is closed wait, in the order they came, and run once it
 * opens — against whichever disk the export has then. No request fails because of the gate.
 */
export type OpKind = 'read' | 'write';

export class OpGate {
  readonly #active: Record<OpKind, number> = { read: 0, write: 0 };
  readonly #closed: Record<OpKind, boolean> = { read: false, write: false };
  /** Requests waiting for the gate to open, in arrival order. */
  #waiting: Array<() => void> = [];
  /** Closers waiting for the requests in flight of a kind to finish. */
  readonly #drained: Record<OpKind, Array<() => void>> = { read: [], write: [] };

  /** Run `fn` as a request of `kind`: at once when the gate is open for it, else once it opens. */
  async run<T>(kind: OpKind, fn: () => Promise<T>): Promise<T> {
    while (this.#closed[kind]) await new Promise<void>((wake) => this.#waiting.push(wake));
    this.#active[kind]++;
    try {
      return await fn();
    } finally {
      if (--this.#active[kind] === 0) for (const done of this.#drained[kind].splice(0)) done();
    }
  }

  /** Admit no new request of `kind`; resolves once those of that kind in flight have finished. */
  async close(kind: OpKind): Promise<void> {
    this.#closed[kind] = true;
    if (this.#active[kind] > 0) await new Promise<void>((done) => this.#drained[kind].push(done));
  }

  /** Admit every kind again; the waiting requests run in the order they came. */
  open(): void {
    this.#closed.read = false;
    this.#closed.write = false;
    for (const wake of this.#waiting.splice(0)) wake();
  }

  /** Requests of `kind` in flight now (for tests). */
  active(kind: OpKind): number {
    return this.#active[kind];
  }
}
