/**
 * Progress events of a job: bytes done and total, a smoothed rate and an ETA. Events are throttled
 * (at most one per `intervalMs`) plus one at the end of each phase, so a callback that draws a bar
 * costs nothing measurable.
 */
export type Operation = 'encrypt' | 'decrypt' | 'convert' | 'rekey-shallow' | 'rekey-deep' | 'verify' | 'snapshot-commit';
export type Phase = 'copy' | 'commit' | 'verify';

export interface Progress {
  operation: Operation;
  phase: Phase;
  /** Bytes of the virtual disk processed so far in this phase. */
  bytesDone: number;
  /** Bytes this phase will process (allocated data, or the capacity for a flat encrypted output). */
  bytesTotal: number;
  /** Bytes per second, smoothed over the last seconds. */
  rate: number;
  /** Seconds left at the current rate; null until a rate is known. */
  etaSeconds: number | null;
}

export type ProgressListener = (p: Progress) => void;

export class ProgressTracker {
  #done = 0;
  #rate = 0;
  #lastEmit = 0;
  #lastSampleTime: number;
  #lastSampleBytes = 0;
  readonly #start: number;

  constructor(
    readonly operation: Operation,
    readonly phase: Phase,
    readonly bytesTotal: number,
    private readonly listener: ProgressListener | undefined,
    private readonly intervalMs = 100,
  ) {
    this.#start = performance.now();
    this.#lastSampleTime = this.#start;
  }

  get bytesDone(): number {
    return this.#done;
  }

  get seconds(): number {
    return (performance.now() - this.#start) / 1000;
  }

  add(bytes: number): void {
    this.#done += bytes;
    const now = performance.now();
    const dt = now - this.#lastSampleTime;
    if (dt >= 250) {
      const instant = ((this.#done - this.#lastSampleBytes) * 1000) / dt;
      // Exponential moving average with a ~1 s horizon.
      const w = Math.min(1, dt / 1000);
      this.#rate = this.#rate === 0 ? instant : this.#rate * (1 - w) + instant * w;
      this.#lastSampleTime = now;
      this.#lastSampleBytes = this.#done;
    }
    if (this.listener && now - this.#lastEmit >= this.intervalMs) {
      this.#lastEmit = now;
      this.#emit();
    }
  }

  /** Emit the final event of the phase. */
  finish(): void {
    const secs = this.seconds;
    if (secs > 0) this.#rate = this.#done / secs;
    this.#emit();
  }

  #emit(): void {
    if (!this.listener) return;
    const rate = this.#rate;
    const left = Math.max(0, this.bytesTotal - this.#done);
    this.listener({
      operation: this.operation,
      phase: this.phase,
      bytesDone: this.#done,
      bytesTotal: this.bytesTotal,
      rate,
      etaSeconds: left === 0 ? 0 : rate > 0 ? left / rate : null,
    });
  }
}
