/**
 * Locks of the disks a job reads and writes, against other vmseal processes and against qemu:
 *
 *  - vmseal's own lock (src/util/lock.ts): an OFD lock on `<real path of the disk>.vmseal-lock`,
 *    shared for inputs, exclusive for outputs and disks rewritten in place. The kernel drops it when
 *    the holder's process ends, however it ends, so there is nothing stale to take over.
 *  - qemu's permission lock bytes (src/util/qemu-lock.ts) on the disk file itself (the VMDK
 *    descriptor, or a raw image), held for the job's life: a VM or qemu-img/qemu-io using the disk
 *    and a vmseal job refuse each other.
 *  - VMware's `<disk>.lck` FOLDER (a running VM on a VMware host) is honoured: the job is refused.
 *  - the NAME of every file a job reads (shared) or writes, replaces or removes (exclusive),
 *    reserved through one `.vmseal-lock` file per folder (src/util/name-lock.ts; NameReservations
 *    below): two jobs whose outputs share a file name (x.vmdk flat writes x-flat.vmdk; another job
 *    writes x-flat.vmdk) refuse each other, and a commit never renames over a file another job
 *    holds. One descriptor per folder, whatever the number of extents.
 */
import { statSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { PipelineError } from './errors.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';
import { acquireQemuLock, QemuLockConflict, type QemuLockHandle } from '../util/qemu-lock.js';
import { FolderNameLocks, type NameLockMode } from '../util/name-lock.js';

export type LockMode = 'shared' | 'exclusive';

export interface DiskLock {
  /** The vmseal lock record file. */
  readonly path: string;
  readonly mode: LockMode;
  release(): Promise<void>;
}

/** VMware's lock folder beside a disk. */
export function vmwareLockPathOf(diskPath: string): string {
  return `${diskPath}.lck`;
}

/** Take the lock of `diskPath` for `operation`, or throw ERR_DISK_BUSY naming the holder (ERR_QEMU_LOCKED for qemu). */
export async function acquireLock(diskPath: string, operation: string, mode: LockMode = 'exclusive'): Promise<DiskLock> {
  return lockWithRecord(diskPath, lockRecordPathFor(diskPath), operation, mode);
}

/** Whether VMware's lock folder stands beside the disk. */
function lockedByVmware(diskPath: string): boolean {
  // A synchronous stat, like every call of the lock protocol itself (src/util/lock.ts): the lock
  // files live in the same folder, and a thread-pool trip per disk of a batch costs more than the call.
  // A missing folder (the usual answer) is no exception: Node builds one with a stack trace for it.
  try {
    return statSync(vmwareLockPathOf(diskPath), { throwIfNoEntry: false })?.isDirectory() ?? false;
  } catch {
    return false;
  }
}

/** acquireLock with the record path already worked out (it costs a realpath walk). */
async function lockWithRecord(diskPath: string, recordPath: string, operation: string, mode: LockMode): Promise<DiskLock> {
  if (lockedByVmware(diskPath)) {
    throw new PipelineError(
      'ERR_DISK_BUSY',
      `${diskPath} is locked by VMware (the lock folder ${vmwareLockPathOf(diskPath)} exists): power off the virtual machine that uses it`,
    );
  }
  let own: FileLockHandle;
  try {
    own = await acquireFileLock(recordPath, { mode, record: { operation, tool: 'vmseal' } });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new PipelineError('ERR_DISK_BUSY', `${diskPath} is ${err.message}`, { cause: err });
    }
    throw err;
  }
  let qemu: QemuLockHandle;
  try {
    qemu = acquireQemuLock(diskPath, mode);
  } catch (err) {
    own.release();
    if (err instanceof QemuLockConflict) {
      throw new PipelineError('ERR_QEMU_LOCKED', `${diskPath} is in use: ${err.message}`, { cause: err });
    }
    throw err;
  }
  let released = false;
  return {
    path: recordPath,
    mode,
    async release() {
      if (released) return;
      released = true;
      qemu.release();
      own.release();
    },
  };
}

export interface LockRequest {
  path: string;
  mode: LockMode;
}

/**
 * Take several locks (in a fixed order, so two jobs cannot deadlock); release all on failure. A
 * path named twice (by any name of the same file) is locked once, exclusively if either asks so.
 */
export async function acquireLocks(requests: Array<string | LockRequest>, operation: string): Promise<DiskLock[]> {
  const byRecord = new Map<string, LockRequest>();
  for (const r of requests) {
    const req: LockRequest = typeof r === 'string' ? { path: r, mode: 'exclusive' } : r;
    const key = lockRecordPathFor(req.path);
    const prev = byRecord.get(key);
    byRecord.set(key, prev && prev.mode === 'exclusive' ? prev : req);
  }
  const ordered = [...byRecord.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const taken: DiskLock[] = [];
  try {
    for (const [record, r] of ordered) taken.push(await lockWithRecord(r.path, record, operation, r.mode));
    return taken;
  } catch (err) {
    await releaseLocks(taken);
    throw err;
  }
}

export async function releaseLocks(locks: DiskLock[]): Promise<void> {
  for (const l of [...locks].reverse()) await l.release();
}

/**
 * The file names a job holds, in as many folders as its files live in (one open lock file per
 * folder). Reservations are all-or-none per call; close() drops them all.
 */
export class NameReservations {
  readonly #folders = new Map<string, FolderNameLocks>();

  #folderOf(path: string): FolderNameLocks {
    const dir = dirname(resolve(path));
    let f = this.#folders.get(dir);
    if (!f) {
      f = FolderNameLocks.open(dir);
      this.#folders.set(dir, f);
    }
    return f;
  }

  /** Reserve the names of `paths` (absolute or relative files); ERR_DISK_BUSY when another job holds one. */
  async reserve(paths: string[], mode: NameLockMode): Promise<void> {
    const byFolder = new Map<FolderNameLocks, string[]>();
    for (const p of paths) {
      const f = this.#folderOf(p);
      // Appended in place: a twoGbMaxExtent output of 16 TiB has 8,193 names (copying the list per name was quadratic).
      const names = byFolder.get(f);
      if (names) names.push(basename(resolve(p)));
      else byFolder.set(f, [basename(resolve(p))]);
    }
    const done: Array<[FolderNameLocks, Map<string, NameLockMode>]> = [];
    try {
      for (const [f, names] of byFolder) {
        done.push([f, new Map(f.held)]);
        await f.take(names.map((name) => ({ name, mode })));
      }
    } catch (err) {
      // All or none: drop what this call added in the folders already done.
      for (const [f, before] of done) for (const name of f.held.keys()) if (!before.has(name)) f.release(name);
      if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') throw new PipelineError('ERR_DISK_BUSY', err.message, { cause: err });
      throw err;
    }
  }

  /** Reserve one name exclusively unless someone holds it (then false): a dead owner holds nothing. */
  tryReserveExclusive(path: string): boolean {
    return this.#folderOf(path).tryTakeExclusive(basename(resolve(path)));
  }

  release(path: string): void {
    this.#folders.get(dirname(resolve(path)))?.release(basename(resolve(path)));
  }

  close(): void {
    for (const f of this.#folders.values()) f.close();
    this.#folders.clear();
  }
}
