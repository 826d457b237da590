/**
 * Advisory lock of a disk against other vmseal processes: `<disk>.lck` beside the disk, like
 * VMware's lock beside a VMDK. The file is created exclusively (O_EXCL) and holds one JSON line:
 *
 *     {"pid":1234,"host":"name","operation":"encrypt","started":"2026-…Z","tool":"vmseal"}
 *
 * A lock whose process is gone (same host, pid not alive) is stale and taken over. A lock that is
 * a directory (VMware's own `.lck` folder of a running VM) or belongs to another host is honoured.
 */
import { link, open, readdir, readFile, unlink, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { PipelineError } from './errors.js';
import { pidAlive } from '../util/process.js';

export interface DiskLock {
  readonly path: string;
  release(): Promise<void>;
}

interface LockRecord {
  pid: number;
  host: string;
  operation: string;
  started: string;
  tool: string;
}

/** A lock file still empty or half written this long after its creation is stale (its writer died between create and write). */
const EMPTY_LOCK_GRACE_MS = 10_000;

export function lockPathOf(diskPath: string): string {
  return `${diskPath}.lck`;
}

async function readRecord(path: string): Promise<LockRecord | 'directory' | 'gone' | 'unreadable'> {
  try {
    const st = await stat(path);
    if (st.isDirectory()) return 'directory';
    const text = await readFile(path, 'utf8');
    const rec = JSON.parse(text) as LockRecord;
    if (!Number.isSafeInteger(rec.pid) || typeof rec.host !== 'string') return 'unreadable';
    return rec;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    return 'unreadable';
  }
}

/** Remove `<lock>.<pid>.<hex>.tmp` files of processes that died while taking the lock. */
async function removeDeadTemps(lockPath: string): Promise<void> {
  const prefix = `${basename(lockPath)}.`;
  for (const f of await readdir(dirname(lockPath)).catch(() => [] as string[])) {
    const m = f.startsWith(prefix) ? /^(\d+)\.[0-9a-f]{8}\.tmp$/.exec(f.slice(prefix.length)) : null;
    if (m && !pidAlive(Number(m[1]))) await unlink(join(dirname(lockPath), f)).catch(() => undefined);
  }
}

/** Take the lock of `diskPath` for `operation`, or throw ERR_DISK_BUSY naming the holder. */
export async function acquireLock(diskPath: string, operation: string): Promise<DiskLock> {
  const path = lockPathOf(diskPath);
  const record: LockRecord = { pid: process.pid, host: hostname(), operation, started: new Date().toISOString(), tool: 'vmseal' };
  await removeDeadTemps(path);
  for (let attempt = 0; attempt < 5; attempt++) {
    // The record is written to a private file first and hard-linked to the lock name: link() creates
    // the name only if it is free, and the lock never exists empty (a kill cannot leave a half lock).
    const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    let linked = false;
    try {
      const fh = await open(tmp, 'wx', 0o644);
      try {
        await fh.writeFile(JSON.stringify(record) + '\n');
        await fh.sync();
      } finally {
        await fh.close();
      }
      await link(tmp, path);
      linked = true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') {
        if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw err;
        // No hard links on this file system: fall back to an exclusive create.
        try {
          await writeFile(path, JSON.stringify(record) + '\n', { flag: 'wx', mode: 0o644 });
          linked = true;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
      }
    } finally {
      await unlink(tmp).catch(() => undefined);
    }
    if (linked) {
      let released = false;
      return {
        path,
        async release() {
          if (released) return;
          released = true;
          // Remove only our own lock (a takeover by another process after a pause must not be undone).
          const now = await readRecord(path);
          if (typeof now === 'object' && now.pid === record.pid && now.host === record.host && now.started === record.started) {
            await unlink(path).catch(() => undefined);
          }
        },
      };
    }
    const holder = await readRecord(path);
    if (holder === 'gone') continue;
    if (holder === 'directory') {
      throw new PipelineError('ERR_DISK_BUSY', `${diskPath} is locked by VMware (the lock folder ${path} exists): power off the virtual machine that uses it`);
    }
    if (holder === 'unreadable') {
      const age = await stat(path).then((s) => Date.now() - s.mtimeMs, () => 0);
      if (age > EMPTY_LOCK_GRACE_MS) {
        await unlink(path).catch(() => undefined);
        continue;
      }
      throw new PipelineError('ERR_DISK_BUSY', `${diskPath} is locked: ${path} exists and is being created by another process`);
    }
    if (holder.host === record.host && !pidAlive(holder.pid)) {
      // Stale: its process died without releasing it. Take it over.
      await unlink(path).catch(() => undefined);
      continue;
    }
    throw new PipelineError(
      'ERR_DISK_BUSY',
      `${diskPath} is in use by ${holder.tool ?? 'another process'} (pid ${holder.pid} on ${holder.host}, ${holder.operation} since ${holder.started}); lock file ${path}`,
    );
  }
  throw new PipelineError('ERR_DISK_BUSY', `could not take the lock ${path} for ${diskPath}: other processes keep taking it`);
}

/** Take several locks (in a fixed order, so two jobs cannot deadlock); release all on failure. */
export async function acquireLocks(paths: string[], operation: string): Promise<DiskLock[]> {
  const unique = [...new Set(paths)].sort();
  const taken: DiskLock[] = [];
  try {
    for (const p of unique) taken.push(await acquireLock(p, operation));
    return taken;
  } catch (err) {
    await releaseLocks(taken);
    throw err;
  }
}

export async function releaseLocks(locks: DiskLock[]): Promise<void> {
  for (const l of locks.reverse()) await l.release();
}
