/**
 * How many images a batch converts at once, and on which threads: a module of its own because the
 * CLI's loader (bin/vmseal.js, src/cli/batch-worker-start.ts) decides from the command line alone
 * how many worker threads to start before the CLI itself is compiled, by the same rule the batch
 * then follows.
 */
import { availableParallelism } from 'node:os';
import { MAX_DEFAULT_JOBS } from './batch-limits.js';

/**
 * Images converted at once when --jobs is not given: IMAGES_PER_THREAD per core, at most
 * MAX_DEFAULT_JOBS — 4 on two cores or more (two threads, two images each: planLanes), 2 on one.
 * A small image's JavaScript keeps its thread's event loop busy: one loop with two images leaves
 * the second core to the thread pool and V8's helpers, and `--jobs 1` waits on the pool most of
 * the time. Measured on 2 cores (docs/performance.md, "One thread per core"): 2 images on the main
 * thread 1.25–1.38× the throughput of `--jobs 1`, 2 threads of 2 images each ≈1.6×.
 */
export function defaultJobs(cores = availableParallelism()): number {
  return Math.min(MAX_DEFAULT_JOBS, IMAGES_PER_THREAD * Math.max(1, cores));
}

/**
 * Images one event loop converts at once. An image's data path (reads, XTS, writes) runs on the
 * libuv thread pool; its JavaScript (opening, planning, staging and committing the output) on its
 * thread's event loop, and is most of the CPU time of a small image. Two images in flight on one
 * loop keep it busy while the other waits for the pool; a third adds nothing but memory, so a
 * batch runs more images at once in worker threads, each with its own loop.
 */
export const IMAGES_PER_THREAD = 2;

/** How a batch's jobs are spread: images at once on the main thread, and in each worker thread. */
export interface LanePlan {
  here: number;
  workers: number[];
}

/**
 * Spread `jobs` images at once over as few threads as carry them (IMAGES_PER_THREAD each, the main
 * thread first). No worker thread when `workers` is false (the CLI runs from its sources), when
 * one loop carries them all, or when the batch has no more images than jobs: a worker's start-up
 * (≈0.15 s of CPU for its own module graph) costs as much as converting some twenty small images.
 */
export function planLanes(jobs: number, images: number, workers: boolean): LanePlan {
  const n = Math.max(1, Math.min(jobs, images));
  if (!workers || n <= IMAGES_PER_THREAD || images <= jobs) return { here: n, workers: [] };
  const threads = Math.ceil(n / IMAGES_PER_THREAD);
  const share = (t: number): number => Math.floor(n / threads) + (t < n % threads ? 1 : 0);
  return { here: share(0), workers: Array.from({ length: threads - 1 }, (_, i) => share(i + 1)) };
}
