import { closeSync, fsyncSync, openSync } from 'node:fs';
import { open, rename, link, unlink, chmod, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname } from 'node:path';

/**
 * Crash-safe file replacement: write a temp file beside the target (same directory, so rename is atomic),
 * fsync it, rename it over the target, fsync the directory. A crash at any point leaves either the old
 * file or the new one, never a mix; a leftover temp file (`<name>.tmp-<pid>-<random>`) is never read.
 */
export function tempName(file: string): string {
  return `${file}${tempSuffix()}`;
}

/** What tempName appends to the file's name: `.tmp-<pid>-<12 hex>`. */
export function tempSuffix(): string {
  return `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
}

/** True if `name` (a bare file name in the same folder) is a temp file made by tempName(`file`). */
export function isTempNameOf(file: string, name: string): boolean {
  const prefix = `${basename(file)}.tmp-`;
  return name.startsWith(prefix) && /^\d+-[0-9a-f]{12}$/.test(name.slice(prefix.length));
}

async function writeTemp(file: string, data: Uint8Array, mode: number): Promise<string> {
  const tmp = tempName(file);
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask may have narrowed or (rarely) the FS widened it: set it exactly
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fh.close();
  return tmp;
}

/** The errors a folder's fsync may give where directories cannot be opened or synced: best effort there. */
function ignorableDirSyncError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EISDIR' || code === 'EPERM' || code === 'EINVAL' || code === 'EACCES';
}

/** fsync a directory so that a rename/link in it is durable. Best effort where directories cannot be opened. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    if (!ignorableDirSyncError(err)) throw err;
  } finally {
    await fh?.close();
  }
}

/** fsyncDir done synchronously (src/util/inline-fs.ts: a memory-backed folder, where it cannot wait). */
export function fsyncDirSync(dir: string): void {
  let fd: number | undefined;
  try {
    fd = openSync(dir, 'r');
    fsyncSync(fd);
  } catch (err) {
    if (!ignorableDirSyncError(err)) throw err;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Atomically replace (or create) `file` with `data`. `mode` is the new file's mode, or 'keep' to keep
 * the mode of the file being replaced (a VMDK descriptor keeps the permissions its owner gave it).
 */
export async function writeFileAtomic(file: string, data: Uint8Array, mode: number | 'keep' = 0o600): Promise<void> {
  const exact = mode === 'keep' ? (await stat(file)).mode & 0o7777 : mode;
  const tmp = await writeTemp(file, data, exact);
  try {
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dirname(file));
}

/**
 * Atomically create `file` with `data` unless it already exists (then returns false and changes nothing):
 * the complete temp file is hard-linked to the final name, which fails with EEXIST if it exists.
 *
 * `syncFolder: false` leaves the fsync of the folder to the caller: a writer of many files in a few
 * folders (a backup's chunks) syncs each folder once before it records the files as durable, instead
 * of once per file.
 */
export async function createFileAtomic(file: string, data: Uint8Array, mode = 0o600, options: { syncFolder?: boolean } = {}): Promise<boolean> {
  const tmp = await writeTemp(file, data, mode);
  try {
    await link(tmp, file); // the linked inode is the temp file's, whose mode writeTemp set exactly
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (!noHardLinks(code)) throw err;
    // No hard links on this file system: fall back to an exclusive create of the final name. A crash
    // in the middle can leave a short file, which the reader refuses (it never overwrites it).
    try {
      await writeExclusive(file, data, mode);
    } catch (err2) {
      if ((err2 as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err2;
    }
    await chmod(file, mode);
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  if (options.syncFolder !== false) await fsyncDir(dirname(file));
  return true;
}

/** Whether a link(2) error says the file system has no hard links (then an exclusive create stands in). */
export function noHardLinks(code: string | undefined): boolean {
  return code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP' || code === 'ENOSYS';
}

/** The synchronous calls createFileAtomicSync makes: node:fs's, or another implementation of them. */
export type SyncFileCalls = Pick<typeof import('node:fs'), 'openSync' | 'writeSync' | 'fchmodSync' | 'fsyncSync' | 'closeSync' | 'linkSync' | 'unlinkSync'>;

/**
 * createFileAtomic(file, data, mode, { syncFolder: false }) with synchronous calls, for a thread
 * that does nothing else (the backup's chunk writers, chunk-writers.ts): the same steps in the same
 * order — temp file `tmp` (default tempName(file)) created exclusively, written whole, its mode set
 * exactly, fsynced, closed, hard-linked to `file` (EEXIST: not written, false), unlinked; without
 * hard links, an exclusive create of `file` instead. The folder's fsync is the caller's.
 *
 * It uses nothing of this module but noHardLinks (its calls come in `fs`), so that a worker can run
 * it from its source text: chunk-writers.ts sends both functions' source to its threads and passes
 * `tmp`, made here (tempSuffix), explicitly.
 */
export function createFileAtomicSync(fs: SyncFileCalls, file: string, data: Uint8Array, mode: number, tmp: string = tempName(file)): boolean {
  const writeSynced = (fd: number): void => {
    for (let done = 0; done < data.length;) done += fs.writeSync(fd, data, done, data.length - done);
    fs.fchmodSync(fd, mode); // the umask may have narrowed the mode: set it exactly
    fs.fsyncSync(fd);
  };
  const fd = fs.openSync(tmp, 'wx', mode);
  try {
    writeSynced(fd);
  } catch (err) {
    fs.closeSync(fd);
    try {
      fs.unlinkSync(tmp);
    } catch {
      // the temp file is never read: a leftover is harmless
    }
    throw err;
  }
  fs.closeSync(fd);
  try {
    fs.linkSync(tmp, file);
    return true;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return false;
    if (!noHardLinks(code)) throw err;
    let fd2: number;
    try {
      fd2 = fs.openSync(file, 'wx', mode);
    } catch (err2) {
      if ((err2 as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err2;
    }
    try {
      writeSynced(fd2);
    } finally {
      fs.closeSync(fd2);
    }
    return true;
  } finally {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // as above
    }
  }
}

async function writeExclusive(file: string, data: Uint8Array, mode: number): Promise<void> {
  const fh = await open(file, 'wx', mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
