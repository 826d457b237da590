/**
 * The images of a batch still to convert, shared by every thread that converts them: each thread
 * (the main thread and each worker) takes its next image itself, instead of a worker asking the
 * main thread for one and waiting for its event loop to answer (a round trip per image that left a
 * worker idle whenever the main thread was busy converting an image of its own).
 *
 * Layout of the SharedArrayBuffer (Int32, little-endian as the host):
 *   [0]        the next image index to hand out; stop() raises it past any batch size
 *   [1 + k]    1 + the index of the image worker lane k last took (0: none yet), written right
 *              after it takes it, so that the main thread can fail that image if the worker thread
 *              dies before it reports it (a worker converting two images at once has two lanes)
 */

/** Added to the counter by stop(): no image index of a batch is that large (MAX_BATCH_IMAGES). */
const STOPPED = 1 << 30;
/** The most images one batch may have: every index stays below STOPPED. */
export const MAX_BATCH_IMAGES = STOPPED - 1;

export class BatchQueue {
  readonly count: number;
  readonly buffer: SharedArrayBuffer;
  readonly #cells: Int32Array;
  /** What the first stop() returned (later takes move the counter, not the count handed out). */
  #handed: number | undefined;

  /** A queue of `count` images for the main thread and `lanes` worker lanes, or one over a buffer another thread made. */
  constructor(count: number, lanes: number, buffer?: SharedArrayBuffer) {
    if (!Number.isSafeInteger(count) || count < 0 || count > MAX_BATCH_IMAGES) throw new RangeError(`a batch of ${count} images`);
    this.count = count;
    this.buffer = buffer ?? new SharedArrayBuffer(4 * (1 + lanes));
    this.#cells = new Int32Array(this.buffer);
  }

  /** The next image's index, or undefined when none is left or the batch was stopped. */
  take(lane?: number): number | undefined {
    const index = Atomics.add(this.#cells, 0, 1);
    if (index >= this.count) return undefined;
    if (lane !== undefined) Atomics.store(this.#cells, 1 + lane, index + 1);
    return index;
  }

  /** The image worker lane `lane` took last, if any. */
  claimedBy(lane: number): number | undefined {
    const v = Atomics.load(this.#cells, 1 + lane);
    return v === 0 ? undefined : v - 1;
  }

  /**
   * Hand out no more images; returns how many were handed out (indices 0 to that, exclusive). A
   * take() that races with it either got its index before (counted) or gets none.
   */
  stop(): number {
    while (this.#handed === undefined) {
      const v = Atomics.load(this.#cells, 0);
      // Stopped by another thread's queue over the same buffer: what had been handed out then is not known here.
      if (v >= STOPPED) this.#handed = this.count;
      else if (Atomics.compareExchange(this.#cells, 0, v, v + STOPPED) === v) this.#handed = Math.min(v, this.count);
    }
    return this.#handed;
  }
}
