/**
 * Giving the event loop a turn during long loops.
 *
 * A loop whose awaits all settle at once (hashing zeros, walking cached metadata, reads served from
 * memory) runs only microtasks: signals, timers and I/O callbacks wait until it ends, so Ctrl-C and
 * SIGTERM would be ignored for minutes. Such a loop calls `turn()` on every step; once per
 * `intervalMs` of work it lets one full event-loop iteration run (setImmediate comes after the poll
 * phase, where signal handlers are dispatched).
 */
export const YIELD_INTERVAL_MS = 50;

export class Yielder {
  #last = performance.now();

  constructor(private readonly intervalMs = YIELD_INTERVAL_MS) {}

  /** Resolves at once, or after an event-loop turn when `intervalMs` have passed since the last one. */
  async turn(): Promise<void> {
    if (performance.now() - this.#last < this.intervalMs) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.#last = performance.now();
  }
}
