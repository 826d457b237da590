/**
 * Starting a batch's worker threads (src/cli/batch-pool.ts), and starting them early.
 *
 * A worker thread takes ≈50 ms from `new Worker` to its first image on the machines measured (a
 * new V8 isolate, Node's bootstrap, batch-worker.js compiled from its code cache and its modules
 * run). Started by the batch — after the CLI is compiled, its arguments parsed, its images listed
 * and its key session opened — that time was serial: the main thread converted alone meanwhile.
 * So bin/vmseal.js starts them first (prestartBatchWorkers), for a command line that is a batch
 * (isBatchCommandLine), as many as the batch's lanes will want by the same rule (planLanes with the
 * command line's --jobs, else defaultJobs()), before it compiles the CLI: they load on the other
 * cores while the main thread starts. Unreferenced until claimed, they never keep the process
 * alive (a batch that ends in a usage error exits at once). The batch claims them
 * (claimPrestartedWorkers) when it knows its plan and stops those it does not need (fewer images
 * than jobs). What one says or does before it is claimed is kept and replayed to its pool
 * (StartedWorker), so a pool sees the same events from an early worker as from one it started.
 *
 * The loader's bundle (dist/cli/batch-worker-start.js) and the CLI's (dist/cli/main.js) each hold a copy of
 * this module; they meet in one process-wide slot (PRESTARTED). A worker is given its images in an
 * 'init' message, never in workerData, so that an early one and a late one start alike.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { defaultJobs, planLanes } from './batch-lanes.js';
import { MAX_JOBS } from './batch-limits.js';
import { workerSourceWithCodeCache } from './code-cache.js';
import { isBatchCommandLine } from './v8-tiering.js';
import { wholeNumberIn } from './whole-number.js';
import { KERNEL_COPY_ENV } from '../pipeline/kernel-copy.js';

/**
 * The environment variables a worker gets: the layers' tuning switches, so that an image takes the
 * same path in a worker as on the main thread (VMSEAL_KERNEL_COPY picks the kernel copy or the
 * engine). Not the rest of the environment, which may hold passphrases (VMSEAL_PASSPHRASE,
 * VMSEAL_HOME_PASSPHRASE, a --passphrase-env variable) that only the main thread's key session reads.
 */
const WORKER_ENV = ['VMSEAL_NATIVE_PATH', 'VMSEAL_INLINE_IO', 'VMSEAL_XTS_IMPL', 'VMSEAL_DEBUG', KERNEL_COPY_ENV];

/** The worker script of a build: batch-worker.js beside the CLI's main.js. */
export const BATCH_WORKER_FILE = 'batch-worker.js';

type WorkerEvent = 'message' | 'error' | 'exit';
/** What a pool listens to on its worker. */
export type WorkerListeners = { message(m: unknown): void; error(err: Error): void; exit(code: number): void };

/**
 * A batch worker thread and the events it raised before a pool took it (adopt). Raised events are
 * kept in order — a worker says 'ready' once loaded, and may fail or exit while nobody listens.
 */
export class StartedWorker {
  readonly worker: Worker;
  readonly script: string;
  readonly #early: Array<[WorkerEvent, unknown]> = [];
  readonly #keep: Record<WorkerEvent, (value: unknown) => void> = {
    message: (m) => this.#early.push(['message', m]),
    error: (err) => this.#early.push(['error', err]),
    exit: (code) => this.#early.push(['exit', code]),
  };

  constructor(script: string) {
    this.script = script;
    const env: Record<string, string> = {};
    for (const name of WORKER_ENV) if (process.env[name] !== undefined) env[name] = process.env[name];
    // batch-worker.js compiled with its V8 code cache when the CLI runs with caches (code-cache.ts).
    const cachedSource = workerSourceWithCodeCache(script);
    this.worker = cachedSource !== undefined ? new Worker(cachedSource, { eval: true, env }) : new Worker(script, { env });
    for (const event of ['message', 'error', 'exit'] as const) this.worker.on(event, this.#keep[event]);
  }

  /**
   * Hand its events to `on` from now on, the ones raised before first and in order, and let it keep
   * the process alive as a batch's worker does.
   */
  adopt(on: WorkerListeners): Worker {
    for (const event of ['message', 'error', 'exit'] as const) {
      this.worker.off(event, this.#keep[event]);
      this.worker.on(event, on[event]);
    }
    this.worker.ref();
    for (const [event, value] of this.#early.splice(0)) (on[event] as (v: unknown) => void)(value);
    return this.worker;
  }
}

/** The process-wide slot where the loader leaves the workers it started early, for the CLI's bundle. */
const PRESTARTED = Symbol.for('vmseal.batch.prestartedWorkers');
type Slot = { [PRESTARTED]?: StartedWorker[] };

/**
 * The --jobs of a command line: its last `--jobs N` or `--jobs=N` (commander keeps the last), or
 * undefined when none is given or its value is not one --jobs takes (the CLI then refuses it).
 */
export function jobsOnCommandLine(argv: readonly string[]): number | 'invalid' | undefined {
  let value: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '--jobs') value = argv[++i] ?? '';
    else if (a.startsWith('--jobs=')) value = a.slice('--jobs='.length);
  }
  if (value === undefined) return undefined;
  // The rule program.ts's --jobs parser (parseInteger) applies.
  return wholeNumberIn(value, { min: 1, max: MAX_JOBS }) ?? 'invalid';
}

/**
 * Start the worker threads a batch command line will want (see the top of this file); none for
 * another command line, or when `cliDir` has no batch-worker.js (a build without workers). Returns
 * how many it started.
 */
export function prestartBatchWorkers(cliDir: string, argv: readonly string[] = process.argv.slice(2), cores?: number): number {
  if (!isBatchCommandLine(argv)) return 0;
  const jobs = jobsOnCommandLine(argv);
  if (jobs === 'invalid') return 0;
  const script = join(cliDir, BATCH_WORKER_FILE);
  if (!existsSync(script)) return 0;
  const { workers } = planLanes(jobs ?? defaultJobs(cores), Number.MAX_SAFE_INTEGER, true);
  if (workers.length > 0) sizeBatchThreadPool(cores);
  const started: StartedWorker[] = [];
  try {
    for (let i = 0; i < workers.length; i++) started.push(new StartedWorker(script));
  } catch {
    // Best effort: a worker that cannot start now (a thread or memory limit) is left to the batch,
    // whose pool starts it when it needs it and reports why it failed.
  }
  for (const w of started) w.worker.unref();
  (globalThis as Slot)[PRESTARTED] = started;
  return started.length;
}

/** libuv's default number of thread-pool threads. */
const LIBUV_POOL_THREADS = 4;

/**
 * A batch whose images run on several threads gets one thread-pool thread per core, when the
 * machine has fewer cores than libuv's default of 4 and UV_THREADPOOL_SIZE is not set. Its event
 * loops (the main thread's and the workers') already keep the cores busy with the images'
 * JavaScript, and the pool's work on cached or memory-backed files — reads, writes, page
 * allocation — is CPU work too: pool threads beyond the cores only preempt the loops that feed
 * them. Measured on 2 cores (docs/performance.md, "Worker threads started while the CLI loads"):
 * 200 images of 2 MiB in tmpfs 0.95× the wall time with two pool threads (three: 1.01×), the same
 * batch onto an ext4 disk, fsyncs included, 1.01×. A single loop (`--jobs` 1 or 2) keeps the
 * default: its pool overlaps the loop's waits, and `--jobs 1` was 1.02× slower with two. libuv
 * reads the variable when the pool first starts, which no work of this process has done yet.
 */
export function sizeBatchThreadPool(cores = availableParallelism(), env: NodeJS.ProcessEnv = process.env): void {
  if (env.UV_THREADPOOL_SIZE !== undefined || cores >= LIBUV_POOL_THREADS) return;
  env.UV_THREADPOOL_SIZE = String(Math.max(1, cores));
}

/**
 * Up to `count` of the workers started early for `script` (prestartBatchWorkers), taken from the
 * slot; the others are stopped, and so are all of them when they run another script than the
 * batch's.
 */
export function claimPrestartedWorkers(count: number, script: string | undefined): StartedWorker[] {
  const slot = globalThis as Slot;
  const early = slot[PRESTARTED] ?? [];
  delete slot[PRESTARTED];
  const usable = early.filter((w) => w.script === script);
  const claimed = usable.slice(0, count);
  for (const w of early) if (!claimed.includes(w)) void w.worker.terminate();
  return claimed;
}
