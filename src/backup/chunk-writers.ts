/**
 * Hash and store backup chunks in worker threads, one message per chunk.
 *
 * Why: on the JS thread, a full backup spends ~1.3 s per 2 GiB in SHA-256 and each new chunk is a
 * chain of seven asynchronous file-system calls (exclusive create of a temp file, write, fchmod,
 * fsync, close, link, unlink), each a hop through libuv's shared pool and back — on a loaded
 * machine each hop waits for a core. A worker does the whole chunk in one job with synchronous
 * calls, and the hashing of several chunks runs in parallel with the disk reads of the JS thread.
 *
 * A job: the chunk's bytes in a SharedArrayBuffer (no copy; the caller does not touch it until the
 * job is answered). The worker hashes them; if `<root>/<xx>/<hash>` is missing it writes the chunk
 * with createFileAtomicSync (src/util/atomic-file.ts: the steps and temp names of createFileAtomic,
 * with syncFolder false), its temp name's suffix made on this thread (tempSuffix) and sent with the
 * job. The folder fsync stays with the caller (Repository.syncChunkFolders, once per backup, before
 * the manifest names the chunk), so the crash story of docs/backup.md is unchanged.
 *
 * The worker's code is the function `workerMain` below, sent as source text (`eval` worker) with
 * the source of createFileAtomicSync and the one function it calls: it needs no separate file, which
 * works the same from src/ under vitest and from the bundles in dist/. It must therefore use nothing
 * from this module's scope: it gets `require` and createFileAtomicSync as its arguments.
 *
 * `VMSEAL_BACKUP_CHUNK_THREADS=0` (for vmseal's own tests) stores on the JS thread through
 * Repository.putChunk instead: the crash tests' fault-injecting file layer patches node:fs/promises
 * of the JS thread only, so that is the path they model (the same steps in the same order). A
 * worker thread loads its own node:fs, which that layer cannot reach, and the layer's model of what
 * is durable (which it rolls the files back to before it kills the process) lives on the JS thread.
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { createFileAtomicSync, noHardLinks, tempSuffix } from '../util/atomic-file.js';
import { sha256Hex, type Repository } from './repository.js';

/** What a worker answers for a job. */
export interface StoredChunk {
  /** Lowercase hex SHA-256 of the chunk's bytes. */
  hash: string;
  /** True when this job wrote the chunk file (false: it was there already). */
  wrote: boolean;
}

interface Job {
  id: number;
  root: string;
  buffer: SharedArrayBuffer;
  length: number;
  /** The temp file's suffix (tempSuffix): `<hash><tmp>`. */
  tmp: string;
}

type Answer = { id: number; hash: string; wrote: boolean } | { id: number; error: { message: string; code?: string; name?: string } };

/* v8 ignore start -- runs in the worker, from its source text */
function workerMain(req: NodeJS.Require, createAtomic: typeof createFileAtomicSync): void {
  const { parentPort } = req('node:worker_threads') as typeof import('node:worker_threads');
  const { createHash } = req('node:crypto') as typeof import('node:crypto');
  const fs = req('node:fs') as typeof import('node:fs');
  const { join } = req('node:path') as typeof import('node:path');

  parentPort!.on('message', (job: Job) => {
    try {
      const data = new Uint8Array(job.buffer, 0, job.length);
      const hash = createHash('sha256').update(data).digest('hex');
      const file = join(job.root, hash.slice(0, 2), hash);
      const wrote = fs.statSync(file, { throwIfNoEntry: false })?.isFile() ? false : createAtomic(fs, file, data, 0o600, `${file}${job.tmp}`);
      parentPort!.postMessage({ id: job.id, hash, wrote });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      parentPort!.postMessage({ id: job.id, error: { message: String(e?.message ?? err), code: e?.code, name: e?.name } });
    }
  });
}
/* v8 ignore stop */

const SOURCE = `${noHardLinks.toString()}
const createFileAtomicSync = ${createFileAtomicSync.toString()};
(${workerMain.toString()})(require, createFileAtomicSync);`;

/** Rebuild a worker's error on this thread (file-system errors keep their `code`, as an awaited fs call's would). */
function reviveError(e: { message: string; code?: string; name?: string }): Error {
  const err = new Error(e.message) as NodeJS.ErrnoException;
  if (e.code !== undefined) err.code = e.code;
  return err;
}

function defaultThreads(): number {
  const env = process.env.VMSEAL_BACKUP_CHUNK_THREADS;
  if (env !== undefined && /^[0-9]$/.test(env)) return Number(env);
  return Math.min(4, Math.max(2, availableParallelism()));
}

/**
 * A pool of chunk writers for one repository's `chunks/` folder. Call close() when done (after
 * every store() has settled): it ends the threads.
 */
export class ChunkWriters {
  private readonly workers: Worker[] = [];
  private readonly idle: Worker[] = [];
  private readonly waiting: Array<(w: Worker) => void> = [];
  private readonly pending = new Map<number, { resolve: (r: StoredChunk) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private failure: Error | null = null;
  private closing = false;

  private readonly root: string;

  /** `threads`: default the available cores, at least 2 and at most 4; 0: on the JS thread (see above). */
  constructor(
    private readonly repo: Repository,
    threads = defaultThreads(),
  ) {
    this.root = repo.chunkRoot;
    for (let i = 0; i < threads; i++) {
      const w = new Worker(SOURCE, { eval: true });
      w.on('message', (a: Answer) => this.answer(w, a));
      // A worker that dies (out of memory, a bug) fails every job it holds and every later store().
      w.on('error', (err) => this.fail(err));
      w.on('exit', (code) => {
        if (code !== 0 && !this.closing) this.fail(new Error(`a backup chunk writer thread exited with code ${code}`));
      });
      this.workers.push(w);
      this.idle.push(w);
    }
  }

  /** Hash `length` bytes of `buffer` and store them unless present; the buffer must not change until this settles. */
  async store(buffer: SharedArrayBuffer, length: number): Promise<StoredChunk> {
    if (this.failure) throw this.failure;
    if (this.workers.length === 0) {
      const data = Buffer.from(buffer, 0, length);
      const hash = sha256Hex(data);
      return { hash, wrote: !(await this.repo.hasChunk(hash)) && (await this.repo.putChunk(hash, data)) };
    }
    const w = this.idle.pop() ?? (await new Promise<Worker>((resolve) => this.waiting.push(resolve)));
    if (this.failure) {
      this.release(w);
      throw this.failure;
    }
    const id = this.nextId++;
    return new Promise<StoredChunk>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      const job: Job = { id, root: this.root, buffer, length, tmp: tempSuffix() };
      w.postMessage(job);
    });
  }

  private release(w: Worker): void {
    const next = this.waiting.shift();
    if (next) next(w);
    else this.idle.push(w);
  }

  private answer(w: Worker, a: Answer): void {
    const p = this.pending.get(a.id);
    this.pending.delete(a.id);
    this.release(w);
    if (!p) return;
    if ('error' in a) p.reject(reviveError(a.error));
    else p.resolve({ hash: a.hash, wrote: a.wrote });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
    // Wake whoever waits for a thread: store() sees the failure and throws.
    for (const w of this.waiting.splice(0)) w(this.workers[0]!);
  }

  /** End the threads. Jobs still running are abandoned (callers settle every store() first). */
  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
