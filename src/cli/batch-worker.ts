/**
 * A batch worker thread (started by src/cli/batch-worker-start.ts, early or by its pool,
 * src/cli/batch-pool.ts, which describes the messages): once given its images ('init'), each of
 * its lanes takes images from the batch's shared queue (src/cli/batch-queue.ts), one at a time,
 * converts each and reports its outcome. Its keys come from the main thread's key session through
 * the key bridge.
 */
import { parentPort } from 'node:worker_threads';
import { describeFailure } from './batch.js';
import type { BatchItem } from './batch.js';
import type { FromWorker, ToWorker, WorkerInit } from './batch-pool.js';
import { BatchQueue } from './batch-queue.js';
import { convertImage } from './commands/convert-image.js';
import { outputLimitError } from './jobs.js';
import { BridgeKeys } from './key-bridge.js';

/**
 * Progress reports to the main thread at most this often (the bar redraws no faster), and none in
 * an image's first interval nor at its end ('done' carries its bytes): an image of a few MiB, done
 * in milliseconds, then costs one message instead of three (its job reports once per chunk and once
 * when it finishes), each of which wakes the main thread.
 */
const PROGRESS_INTERVAL_MS = 100;

const port = parentPort;
if (port === null) throw new Error('src/cli/batch-worker.ts runs as a worker thread of a batch only');
const send = (m: FromWorker): void => port.postMessage(m);
interface Batch {
  init: WorkerInit;
  queue: BatchQueue;
  keys: BridgeKeys;
}
/** Its batch, once given ('init'): the images, the options, the shared queue and the keys. */
let batch: Batch | undefined;
/** The images being converted (by index), each stopped by an 'abort'. */
const current = new Map<number, AbortController>();
let running = false;

async function runImage({ init, keys }: Batch, index: number, item: BatchItem): Promise<void> {
  const controller = new AbortController();
  current.set(index, controller);
  const started = performance.now();
  const seconds = (): number => (performance.now() - started) / 1000;
  let lastProgress = started;
  const hooks = {
    signal: controller.signal,
    onProgress: (p: { bytesDone: number; bytesTotal: number }): void => {
      const now = performance.now();
      if (now - lastProgress < PROGRESS_INTERVAL_MS || p.bytesDone >= p.bytesTotal) return;
      lastProgress = now;
      send({ type: 'progress', index, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal });
    },
  };
  try {
    const r = await convertImage(item, init.opts, keys, () => keys.newLockers(), hooks);
    send(
      'skipped' in r
        ? { type: 'done', index, bytes: 0, seconds: seconds(), skipped: true }
        : { type: 'done', index, bytes: r.bytesProcessed, seconds: seconds() },
    );
  } catch (err) {
    const error = describeFailure(outputLimitError({ command: 'convert' }, err), controller.signal);
    send(error === undefined ? { type: 'not-run', index } : { type: 'failed', index, seconds: seconds(), error });
  } finally {
    current.delete(index);
  }
}

/** One lane: take images from the batch's queue, one at a time, until none is left (or the batch is stopped). */
async function takeImages(b: Batch, lane: number): Promise<void> {
  const { init, queue } = b;
  for (let index = queue.take(lane); index !== undefined; index = queue.take(lane)) {
    send({ type: 'start', index });
    await runImage(b, index, init.items[index]!);
  }
}

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'init':
      if (batch !== undefined) return;
      batch = { init: m.init, queue: new BatchQueue(m.init.items.length, 0, m.init.queue), keys: new BridgeKeys(send, m.init.passphraseGiven) };
      return;
    case 'go':
      if (running || batch === undefined) return;
      running = true;
      // Its lanes share this thread's event loop: while one image waits for the thread pool
      // (reads, XTS, writes), another runs its JavaScript.
      for (const lane of batch.init.lanes) void takeImages(batch, lane);
      return;
    case 'abort': {
      const err = new Error('interrupted');
      err.name = 'AbortError';
      for (const c of current.values()) c.abort(err);
      return;
    }
    case 'key-reply':
      batch?.keys.onReply(m);
      return;
    case 'close':
      batch?.keys.close();
      port.close();
      return;
  }
});
// Loaded: the main thread may stop this worker gracefully ('close') from now on.
send({ type: 'ready' });
