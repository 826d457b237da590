/**
 * A batch worker thread (started by src/cli/batch-pool.ts, which describes the messages): converts
 * the images the main thread hands it, one at a time, and answers each with its outcome. Its keys
 * come from the main thread's key session through the key bridge.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { describeFailure } from './batch.js';
import type { FromWorker, ToWorker, WorkerInit } from './batch-pool.js';
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
const init = workerData as WorkerInit;
const send = (m: FromWorker): void => port.postMessage(m);
const keys = new BridgeKeys(send, init.passphraseGiven);
/** The image being converted, stopped by an 'abort'. */
let current: AbortController | undefined;

async function runImage(item: { input: string; output: string }): Promise<void> {
  const controller = new AbortController();
  current = controller;
  let lastProgress = performance.now();
  const hooks = {
    signal: controller.signal,
    onProgress: (p: { bytesDone: number; bytesTotal: number }): void => {
      const now = performance.now();
      if (now - lastProgress < PROGRESS_INTERVAL_MS || p.bytesDone >= p.bytesTotal) return;
      lastProgress = now;
      send({ type: 'progress', bytesDone: p.bytesDone, bytesTotal: p.bytesTotal });
    },
  };
  try {
    const r = await convertImage(item, init.opts, keys, () => keys.newLockers(), hooks);
    send('skipped' in r ? { type: 'done', bytes: 0, skipped: true } : { type: 'done', bytes: r.bytesProcessed });
  } catch (err) {
    const error = describeFailure(outputLimitError({ command: 'convert' }, err), controller.signal);
    send(error === undefined ? { type: 'not-run' } : { type: 'failed', error });
  } finally {
    current = undefined;
  }
}

port.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'run':
      void runImage(m.item);
      return;
    case 'abort': {
      const err = new Error('interrupted');
      err.name = 'AbortError';
      current?.abort(err);
      return;
    }
    case 'key-reply':
      keys.onReply(m);
      return;
    case 'close':
      keys.close();
      port.close();
      return;
  }
});
// Loaded: the main thread may hand this worker images from now on.
send({ type: 'ready' });
