/**
 * The worker threads of a batch. `--jobs N` images run at once: up to IMAGES_PER_THREAD of them on
 * the main thread's event loop, the rest in worker threads (src/cli/batch-worker.ts) of up to
 * IMAGES_PER_THREAD each (planLanes, src/cli/batch-lanes.ts), each image from its first file look-up to
 * its committed output on one thread's event loop and heap. A small image's data path runs on the
 * thread pool, but most of its CPU time is JavaScript (opening, planning, creating and committing
 * the output): two images on one loop fill the loop's waits for the pool, and only more threads
 * run more of that JavaScript at once — at the price of a second module graph and a cold JIT per
 * thread, which is why the main thread carries the first images and a worker carries several.
 *
 * Every thread takes its next image itself from the batch's shared queue (src/cli/batch-queue.ts):
 * a worker never waits for the main thread between two images. The main thread answers key
 * requests (src/cli/key-bridge.ts), feeds the progress bar and prints the summary in input order.
 *
 * Worker → main thread  { type: 'start', index } (it took that image)
 *                       { type: 'progress', index, bytesDone, bytesTotal } (at most every 100 ms per image, never the last)
 *                       { type: 'done', index, bytes, seconds, skipped? } | { type: 'failed', index, seconds, error }
 *                       | { type: 'not-run', index } | key requests
 * Main thread → worker  { type: 'init', init } (first: its images, the queue's buffer and its lane
 *                       numbers — one per image it converts at once — and the image options)
 *                       { type: 'go' } | { type: 'abort' } | { type: 'close' } | key replies
 * A worker is started by src/cli/batch-worker-start.ts, early (before the CLI is compiled) or by the
 * pool; it loads and says 'ready' before it has its 'init'. It starts taking images at 'go' (the
 * batch has begun: sent once, not per image). 'abort' (Ctrl-C, SIGTERM: the main thread has stopped
 * the queue) stops its images in flight, each of which removes its staging output and answers
 * 'not-run'; 'close' wipes its keys and lets it exit.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Worker } from 'node:worker_threads';
import type { BatchHelpers, BatchItem, BatchItemResult, ItemError } from './batch.js';
import type { BatchQueue } from './batch-queue.js';
import { BATCH_WORKER_FILE, StartedWorker } from './batch-worker-start.js';
import { ExitCode } from './exit-codes.js';
import type { ImageConvertOptions } from './commands/convert-image.js';
import type { JobHooks } from './jobs.js';
import type { KeyDesk, KeyReply, KeyRequest } from './key-bridge.js';

/** What a worker is given ('init'): the image options and the batch's images, never a key option or secret. */
export interface WorkerInit {
  opts: ImageConvertOptions;
  passphraseGiven: boolean;
  items: readonly BatchItem[];
  /** The BatchQueue's buffer, and this worker's lanes in it: one per image it converts at once. */
  queue: SharedArrayBuffer;
  lanes: number[];
}

export type ToWorker = { type: 'init'; init: WorkerInit } | { type: 'go' } | { type: 'abort' } | { type: 'close' } | KeyReply;

export type FromWorker =
  | { type: 'ready' }
  | { type: 'start'; index: number }
  | { type: 'progress'; index: number; bytesDone: number; bytesTotal: number }
  | { type: 'done'; index: number; bytes: number; seconds: number; skipped?: boolean }
  | { type: 'failed'; index: number; seconds: number; error: ItemError }
  | { type: 'not-run'; index: number }
  | KeyRequest;

/**
 * The built worker script beside this module (dist/cli/batch-worker.js), or undefined when the CLI
 * runs from its TypeScript sources (in-process tests), where the batch runs its images on the main
 * thread instead.
 */
export function batchWorkerScript(): URL | undefined {
  const url = new URL(`./${BATCH_WORKER_FILE}`, import.meta.url);
  return url.protocol === 'file:' && existsSync(url) ? url : undefined;
}

/** What the pool tells its batch: the images its workers take, and how each ended. */
export interface PoolEvents {
  /** A worker took image `index`: the hooks that take its progress (`done` is called when it ends). */
  started(index: number): Pick<JobHooks, 'onProgress' | 'done'>;
  /** Image `index` ended: its result, or undefined when an abort stopped it (not run). */
  ended(index: number, result: BatchItemResult | undefined): void;
}

/** One worker thread and the images it runs. */
class WorkerThread {
  readonly worker: Worker;
  readonly lanes: readonly number[];
  gone = false;
  /** Set once its modules are loaded ('ready'). */
  ready = false;
  /** The images it reported taking and has not ended, with their progress hooks. */
  readonly current = new Map<number, Pick<JobHooks, 'onProgress' | 'done'>>();
  readonly #pool: BatchPool;

  /** `started`: a worker started early (batch-worker-start.ts) or by the pool; what it said so far is replayed. */
  constructor(pool: BatchPool, started: StartedWorker, init: WorkerInit, desk: KeyDesk) {
    this.#pool = pool;
    this.lanes = init.lanes;
    this.worker = started.adopt({
      message: (m) => this.onMessage(m as FromWorker, desk),
      // A worker that crashed fails its image (an internal error); the others take its share.
      error: (err) => this.end(err),
      exit: (code) => this.end(new Error(`the batch worker thread stopped (exit code ${code})`)),
    });
    this.post({ type: 'init', init });
  }

  private onMessage(m: FromWorker, desk: KeyDesk): void {
    switch (m.type) {
      case 'ready':
        this.ready = true;
        return;
      case 'key':
        void desk.answer(m).then(({ reply, transfer }) => {
          if (!this.gone) this.worker.postMessage(reply satisfies ToWorker, transfer);
          // A KEK for a worker that died is wiped here instead of left to the garbage collector.
          else for (const b of transfer) new Uint8Array(b).fill(0);
        });
        return;
      case 'start':
        this.current.set(m.index, this.#pool.events?.started(m.index) ?? { onProgress: () => undefined, done: () => undefined });
        return;
      case 'progress':
        this.current.get(m.index)?.onProgress({ bytesDone: m.bytesDone, bytesTotal: m.bytesTotal });
        return;
      case 'done':
        // The worker leaves an image's last progress report to this message (batch-worker.ts).
        this.current.get(m.index)?.onProgress({ bytesDone: m.bytes, bytesTotal: m.bytes });
        this.settle(m.index, { ok: true, bytes: m.bytes, seconds: m.seconds, ...(m.skipped ? { skipped: true } : {}) });
        return;
      case 'failed':
        this.settle(m.index, { ok: false, bytes: 0, seconds: m.seconds, error: m.error });
        return;
      case 'not-run':
        this.settle(m.index, undefined);
        return;
    }
  }

  private settle(index: number, outcome: Omit<BatchItemResult, 'input' | 'output'> | undefined): void {
    const item = this.#pool.items[index]!;
    const hooks = this.current.get(index);
    if (hooks !== undefined) {
      hooks.done();
      this.current.delete(index);
    }
    this.#pool.events?.ended(index, outcome === undefined ? undefined : { input: item.input, output: item.output, ...outcome });
  }

  private end(err: Error): void {
    if (this.gone) return;
    this.gone = true;
    // The images it took, even ones it had not reported yet, fail with the thread's error (an
    // image a lane took last and already ended is recorded already: the batch ignores it).
    const taken = new Set(this.current.keys());
    for (const lane of this.lanes) {
      const index = this.#pool.queue.claimedBy(lane);
      if (index !== undefined) taken.add(index);
    }
    for (const index of taken) this.settle(index, { ok: false, bytes: 0, seconds: 0, error: internalFailure(err) });
  }

  post(m: ToWorker): void {
    if (!this.gone) this.worker.postMessage(m);
  }
}

/** A thread's death as an image's failure (an internal error: exit code 70). */
function internalFailure(err: Error): ItemError {
  return { code: 'ERR_UNEXPECTED', reason: `internal error: ${err.message}`, exitCode: ExitCode.INTERNAL };
}

export class BatchPool implements BatchHelpers {
  readonly items: readonly BatchItem[];
  readonly queue: BatchQueue;
  /** The progress hooks of an image a worker took (the batch's bar); none by default. */
  progress: (() => Pick<JobHooks, 'onProgress' | 'done'>) | undefined;
  events: PoolEvents | undefined;
  private readonly threads: WorkerThread[] = [];

  /**
   * One worker per entry of `lanes` (how many images it converts at once) over the batch's `items`
   * and `queue`, whose lanes they take in turn: the ones started early (`early`, claimed by the
   * batch from src/cli/batch-worker-start.ts) first, then new ones, whose start-up (≈0.15 s of CPU
   * each) overlaps the batch's key set-up and its first images, which the main thread converts
   * meanwhile. None takes an image before start().
   */
  constructor(
    script: URL,
    lanes: readonly number[],
    init: Omit<WorkerInit, 'items' | 'queue' | 'lanes'>,
    desk: KeyDesk,
    items: readonly BatchItem[],
    queue: BatchQueue,
    early: readonly StartedWorker[] = [],
  ) {
    this.items = items;
    this.queue = queue;
    let next = 0;
    for (const [t, n] of lanes.entries()) {
      const own = Array.from({ length: n }, (_, i) => next + i);
      next += n;
      const started = early[t] ?? new StartedWorker(fileURLToPath(script));
      this.threads.push(new WorkerThread(this, started, { ...init, items, queue: queue.buffer, lanes: own }, desk));
    }
  }

  /** The batch has begun: the workers take images from the queue and report them to `record`. */
  start(_queue: BatchQueue, record: (index: number, result: BatchItemResult | undefined) => void): void {
    this.events = { started: () => this.progress?.() ?? { onProgress: () => undefined, done: () => undefined }, ended: record };
    for (const t of this.threads) t.post({ type: 'go' });
  }

  /** Stop every worker's image in flight (the queue is stopped by the batch): each answers 'not-run'. */
  abort(): void {
    for (const t of this.threads) t.post({ type: 'abort' });
  }

  /**
   * Let every worker wipe its keys and exit; resolves when they have. One still loading its modules
   * never got an image nor a key: it is stopped at once instead of waited for.
   */
  async close(): Promise<void> {
    const exits = this.threads
      .filter((t) => !t.gone)
      .map((t) =>
        t.ready
          ? new Promise<void>((resolve) => {
              t.worker.once('exit', () => resolve());
              t.post({ type: 'close' });
            })
          : t.worker.terminate().then(() => undefined),
      );
    this.threads.length = 0;
    await Promise.all(exits);
  }
}
