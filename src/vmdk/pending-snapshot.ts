/**
 * The unfinished snapshot child, and how a crash in the middle of making one is undone without a
 * manual step (docs/vmdk.md, "Snapshot chains").
 *
 * createSnapshot (snapshot.ts) writes the child of a layer aside, beside the layer, under a name
 * made from the layer's own (`.<layer file>.vmseal-snapshot`), fsyncs it, makes the layer read-only,
 * then renames the child to its final name: a finished child is only ever made by that rename, so
 * the temporary file standing beside a layer marks a snapshot of it that did not finish — its layer
 * has no child from it, and whatever that snapshot changed is undone by removing the file and
 * giving the layer its write bits back. A layer that was read-only already when the snapshot began
 * (it has children: a second child, a branch) gets `.<layer file>.vmseal-snapshot-sibling` instead,
 * whose undo only removes the file (the layer stays read-only: it has a child).
 *
 * The undo runs under the layer's exclusive vmseal lock, which the snapshot itself holds from before
 * the temporary file is made to after the rename: whoever takes that lock while the file exists
 * knows the snapshot that made it is dead (a lock dies with its process).
 */
import { chmod, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ioError } from './errors.js';
import { fsyncDir } from '../util/atomic-file.js';
import { acquireFileLock, FileLockError, holdsExclusiveLock, lockRecordPathFor } from '../util/lock.js';

/** The temporary name of a new child of the layer `layerPath` (absolute), by whether the snapshot makes the layer read-only. */
export function pendingChildPath(layerPath: string, makesReadOnly: boolean): string {
  return join(dirname(layerPath), `.${basename(layerPath)}.vmseal-snapshot${makesReadOnly ? '' : '-sibling'}`);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Set the write bits of `files` off (children exist) or back from their group and others' read bits. */
export async function setWritable(files: string[], writable: boolean): Promise<void> {
  for (const f of files) {
    try {
      const mode = (await stat(f)).mode & 0o777;
      const w = mode | ((mode & 0o444) >> 1);
      await chmod(f, writable ? w : mode & ~0o222);
    } catch (err) {
      throw ioError(err, writable ? 'make the file writable again' : 'make the file read-only', f);
    }
  }
}

/**
 * Undo a snapshot of the layer `layerPath` (absolute) that a crash left unfinished, if any (see the
 * top of this file); `layerFiles` lists the layer's files (asked only when they are made writable).
 * Under the layer's exclusive lock — the caller's (`lockHeld`: createSnapshot), this process's own,
 * or taken here; when another process holds it (maybe the very snapshot, still running), nothing is
 * done. Returns whether something was undone.
 * The layer is made writable before the file goes: a crash in between leaves the file, which the
 * next undo removes.
 */
export async function undoUnfinishedSnapshot(layerPath: string, layerFiles: () => Promise<string[]>, lockHeld = false): Promise<boolean> {
  const reopens = pendingChildPath(layerPath, true);
  const sibling = pendingChildPath(layerPath, false);
  // The common case costs two stats: no snapshot was cut short.
  if (!(await exists(reopens)) && !(await exists(sibling))) return false;
  const record = lockRecordPathFor(layerPath);
  let lock;
  if (!lockHeld && !holdsExclusiveLock(record)) {
    try {
      lock = await acquireFileLock(record, { mode: 'exclusive', record: { operation: 'undo an unfinished snapshot' } });
    } catch (err) {
      if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') return false;
      throw err;
    }
  }
  try {
    let undone = false;
    if (await exists(reopens)) {
      await setWritable(await layerFiles(), true);
      await remove(reopens);
      undone = true;
    }
    if (await exists(sibling)) {
      await remove(sibling);
      undone = true;
    }
    if (undone) await fsyncDir(dirname(layerPath));
    return undone;
  } finally {
    lock?.release();
  }
}

async function remove(path: string): Promise<void> {
  await rm(path, { force: true }).catch((err: unknown) => {
    throw ioError(err, 'remove the unfinished snapshot', path);
  });
}
