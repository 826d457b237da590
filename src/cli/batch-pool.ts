/**
 * The worker threads of a batch: `--jobs N` (N > 1) images run at once, each in one of N worker
 * threads (src/cli/batch-worker.ts) from its first file look-up to its committed output, on the
 * worker's own event loop and heap. A batch of small images costs mostly JavaScript per image
 * (opening, planning, creating and committing the output), and one event loop running N jobs gets
 * no faster than one core; N event loops do. The main thread only hands out images, answers key
 * requests (src/cli/key-bridge.ts), feeds the progress bar and prints the summary in input order.
 *
 * Main thread → worker  { type: 'run', item } | { type: 'abort' } | { type: 'close' } | key replies
 * Worker → main thread  { type: 'ready' } (its modules are loaded)
 *                       { type: 'progress', bytesDone, bytesTotal } (at most every 100 ms, never the last)
 *                       { type: 'done', bytes, skipped? } | { type: 'failed', error } | { type: 'not-run' }
 *                       | key requests
 * A worker runs one image at a time. 'abort' (Ctrl-C, SIGTERM) stops its image, which removes its
 * staging output and answers 'not-run'; 'close' wipes its keys and lets it exit.
 */
import { existsSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { DescribedFailure, type BatchItem, type ItemError } from './batch.js';
import type { ImageConvertOptions } from './commands/convert-image.js';
import type { JobHooks } from './jobs.js';
import type { KeyDesk, KeyReply, KeyRequest } from './key-bridge.js';
import { KERNEL_COPY_ENV } from '../pipeline/kernel-copy.js';

/** What a worker is started with (workerData): the image options only, never a key option or secret. */
export interface WorkerInit {
  opts: ImageConvertOptions;
  passphraseGiven: boolean;
}

export type ToWorker = { type: 'run'; item: BatchItem } | { type: 'abort' } | { type: 'close' } | KeyReply;

export type FromWorker =
  | { type: 'ready' }
  | { type: 'progress'; bytesDone: number; bytesTotal: number }
  | { type: 'done'; bytes: number; skipped?: boolean }
  | { type: 'failed'; error: ItemError }
  | { type: 'not-run' }
  | KeyRequest;

/**
 * The environment variables a worker gets: the layers' tuning switches, so that an image takes the
 * same path in a worker as on the main thread (VMSEAL_KERNEL_COPY picks the kernel copy or the
 * engine). Not the rest of the environment, which may hold passphrases (VMSEAL_PASSPHRASE,
 * VMSEAL_HOME_PASSPHRASE, a --passphrase-env variable) that only the main thread's key session reads.
 */
const WORKER_ENV = ['VMSEAL_NATIVE_PATH', 'VMSEAL_INLINE_IO', 'VMSEAL_XTS_IMPL', 'VMSEAL_DEBUG', KERNEL_COPY_ENV];

/**
 * The built worker script beside this module (dist/cli/batch-worker.js), or undefined when the CLI
 * runs from its TypeScript sources (in-process tests), where the batch runs its images on the main
 * thread instead.
 */
export function batchWorkerScript(): URL | undefined {
  const url = new URL('./batch-worker.js', import.meta.url);
  return url.protocol === 'file:' && existsSync(url) ? url : undefined;
}

function abortError(): Error {
  const err = new Error('interrupted');
  err.name = 'AbortError';
  return err;
}

interface Running {
  resolve: (r: { bytes: number; skipped?: boolean }) => void;
  reject: (err: unknown) => void;
  hooks: Pick<JobHooks, 'onProgress'>;
}

/** One worker thread and the image it runs. */
class Lane {
  readonly worker: Worker;
  running: Running | undefined;
  gone = false;
  /** Set once its modules are loaded ('ready'). */
  ready = false;
  private readonly onReady: (lane: Lane) => void;

  constructor(script: URL, init: WorkerInit, desk: KeyDesk, onReady: (lane: Lane) => void) {
    this.onReady = onReady;
    const env: Record<string, string> = {};
    for (const name of WORKER_ENV) if (process.env[name] !== undefined) env[name] = process.env[name];
    this.worker = new Worker(script, { workerData: init, env });
    this.worker.on('message', (m: FromWorker) => this.onMessage(m, desk));
    // A worker that crashed fails its image (an internal error); the pool starts another for the next.
    this.worker.on('error', (err) => this.end(err));
    this.worker.on('exit', (code) => this.end(new Error(`the batch worker thread stopped (exit code ${code})`)));
  }

  private onMessage(m: FromWorker, desk: KeyDesk): void {
    switch (m.type) {
      case 'ready':
        this.ready = true;
        this.onReady(this);
        return;
      case 'key':
        void desk.answer(m).then(({ reply, transfer }) => {
          if (!this.gone) this.worker.postMessage(reply satisfies ToWorker, transfer);
          // A KEK for a worker that died is wiped here instead of left to the garbage collector.
          else for (const b of transfer) new Uint8Array(b).fill(0);
        });
        return;
      case 'progress':
        this.running?.hooks.onProgress({ bytesDone: m.bytesDone, bytesTotal: m.bytesTotal });
        return;
      case 'done':
        // The worker leaves an image's last progress report to this message (batch-worker.ts).
        this.running?.hooks.onProgress({ bytesDone: m.bytes, bytesTotal: m.bytes });
        this.running?.resolve({ bytes: m.bytes, ...(m.skipped ? { skipped: true } : {}) });
        return;
      case 'failed':
        this.running?.reject(new DescribedFailure(m.error));
        return;
      case 'not-run':
        this.running?.reject(abortError());
        return;
    }
  }

  private end(err: Error): void {
    this.gone = true;
    this.running?.reject(err);
  }

  post(m: ToWorker): void {
    this.worker.postMessage(m);
  }
}

export class BatchPool {
  /** Workers whose modules are loaded and that run no image. */
  private readonly idle: Lane[] = [];
  private readonly lanes: Lane[] = [];

  /**
   * Start `size` workers at once: their start-up (≈0.2 s each) overlaps the batch's key set-up and
   * its first images, which the main thread converts until a worker is ready. A worker that dies is
   * not replaced: the main thread takes its share.
   */
  constructor(script: URL, size: number, init: WorkerInit, desk: KeyDesk) {
    for (let i = 0; i < size; i++) this.lanes.push(new Lane(script, init, desk, (lane) => this.idle.push(lane)));
  }

  /**
   * Convert one image in an idle worker, or return undefined when no worker is free (the caller
   * runs it on its own thread). Resolves with its bytes; rejects with a DescribedFailure when it
   * failed, an AbortError when `signal` stopped it (its output cleaned up), or the worker's own
   * error if the thread died.
   */
  tryRun(
    item: BatchItem,
    hooks: Pick<JobHooks, 'onProgress' | 'done'>,
    signal: AbortSignal | undefined,
  ): Promise<{ bytes: number; skipped?: boolean }> | undefined {
    let lane = this.idle.pop();
    while (lane?.gone === true) lane = this.idle.pop();
    if (lane === undefined) return undefined;
    const busy = lane;
    const onAbort = (): void => {
      if (!busy.gone) busy.post({ type: 'abort' });
    };
    return new Promise<{ bytes: number; skipped?: boolean }>((resolve, reject) => {
      busy.running = { resolve, reject, hooks };
      busy.post({ type: 'run', item });
      signal?.addEventListener('abort', onAbort, { once: true });
      if (signal?.aborted === true) onAbort();
    }).finally(() => {
      signal?.removeEventListener('abort', onAbort);
      hooks.done();
      busy.running = undefined;
      if (!busy.gone) this.idle.push(busy);
    });
  }

  /**
   * Let every worker wipe its keys and exit; resolves when they have. One still loading its modules
   * never got an image nor a key: it is stopped at once instead of waited for.
   */
  async close(): Promise<void> {
    const exits = this.lanes
      .filter((l) => !l.gone)
      .map((l) =>
        l.ready
          ? new Promise<void>((resolve) => {
              l.worker.once('exit', () => resolve());
              l.post({ type: 'close' });
            })
          : l.worker.terminate().then(() => undefined),
      );
    this.lanes.length = 0;
    this.idle.length = 0;
    await Promise.all(exits);
  }
}
