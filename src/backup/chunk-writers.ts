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
 * exactly as createFileAtomic (src/util/atomic-file.ts) does with syncFolder false — temp file
 * `<hash>.tmp-<pid>-<12 hex>` created exclusively with mode 0600, written whole, fchmod 0600,
 * fsync, closed, hard-linked to the final name (EEXIST: another writer stored it first: not ours),
 * temp unlinked; no hard links on the file system: exclusive create of the final name instead.
 * The folder fsync stays with the caller (Repository.syncChunkFolders, once per backup, before the
 * manifest names the chunk), so the crash story of docs/backup.md is unchanged.
 *
 * The worker's code is the function `workerMain` below, sent as source text (`eval` worker): it
 * needs no separate file, which works the same from src/ under vitest and from the bundles in dist/.
 * It must therefore use nothing from this module's scope: it gets `require` as its argument.
 *
 * `VMSEAL_BACKUP_CHUNK_THREADS=0` (for vmseal's own tests) stores on the JS thread through
 * Repository.putChunk instead: the crash tests' fault-injecting file layer patches node:fs/promises
 * of the JS thread only, so that is the path they model (the same steps in the same order).
 */
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
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
}

type Answer = { id: number; hash: string; wrote: boolean } | { id: number; error: { message: string; code?: string; name?: string } };

/* v8 ignore start -- runs in the worker, from its source text */
function workerMain(req: NodeJS.Require): void {
  const { parentPort } = req('node:worker_threads') as typeof import('node:worker_threads');
  const { createHash, randomBytes } = req('node:crypto') as typeof import('node:crypto');
  const fs = req('node:fs') as typeof import('node:fs');
  const { join } = req('node:path') as typeof import('node:path');
  const MODE = 0o600;

  const writeWhole = (fd: number, data: Uint8Array): void => {
    for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done);
  };
  const writeSynced = (fd: number, data: Uint8Array): void => {
    writeWhole(fd, data);
    fs.fchmodSync(fd, MODE); // the umask may have narrowed the mode: set it exactly
    fs.fsyncSync(fd);
  };
  /** createFileAtomic(file, data, 0o600, { syncFolder: false }), synchronously. */
  const createAtomic = (file: string, data: Uint8Array): boolean => {
    const tmp = `${file}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
    const fd = fs.openSync(tmp, 'wx', MODE);
    try {
      writeSynced(fd, data);
    } catch (err) {
      fs.closeSync(fd);
      fs.rmSync(tmp, { force: true });
      throw err;
    }
    fs.closeSync(fd);
    try {
      fs.linkSync(tmp, file);
      return true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') return false;
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw err;
      let fd2: number;
      try {
        fd2 = fs.openSync(file, 'wx', MODE);
      } catch (err2) {
        if ((err2 as NodeJS.ErrnoException).code === 'EEXIST') return false;
        throw err2;
      }
      try {
        writeSynced(fd2, data);
      } finally {
        fs.closeSync(fd2);
      }
      return true;
    } finally {
      fs.rmSync(tmp, { force: true });
    }
  };

  parentPort!.on('message', (job: Job) => {
    try {
      const data = new Uint8Array(job.buffer, 0, job.length);
      const hash = createHash('sha256').update(data).digest('hex');
      const file = join(job.root, hash.slice(0, 2), hash);
      const wrote = fs.statSync(file, { throwIfNoEntry: false })?.isFile() ? false : createAtomic(file, data);
      parentPort!.postMessage({ id: job.id, hash, wrote });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      parentPort!.postMessage({ id: job.id, error: { message: String(e?.message ?? err), code: e?.code, name: e?.name } });
    }
  });
}
/* v8 ignore stop */

const SOURCE = `(${workerMain.toString()})(require);`;

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
      const job: Job = { id, root: this.root, buffer, length };
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
