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
 */
import { stat } from 'node:fs/promises';
import { PipelineError } from './errors.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';
import { acquireQemuLock, QemuLockConflict, type QemuLockHandle } from '../util/qemu-lock.js';

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

/** Take the lock of `diskPath` for `operation`, or throw ERR_DISK_BUSY naming the holder. */
export async function acquireLock(diskPath: string, operation: string, mode: LockMode = 'exclusive'): Promise<DiskLock> {
  const vmware = vmwareLockPathOf(diskPath);
  if (await stat(vmware).then((s) => s.isDirectory(), () => false)) {
    throw new PipelineError('ERR_DISK_BUSY', `${diskPath} is locked by VMware (the lock folder ${vmware} exists): power off the virtual machine that uses it`);
  }
  const recordPath = lockRecordPathFor(diskPath);
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
      throw new PipelineError('ERR_DISK_BUSY', `${diskPath} is in use: ${err.message}`, { cause: err });
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
  const ordered = [...byRecord.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([, r]) => r);
  const taken: DiskLock[] = [];
  try {
    for (const r of ordered) taken.push(await acquireLock(r.path, operation, r.mode));
    return taken;
  } catch (err) {
    await releaseLocks(taken);
    throw err;
  }
}

export async function releaseLocks(locks: DiskLock[]): Promise<void> {
  for (const l of [...locks].reverse()) await l.release();
}
