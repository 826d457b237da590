/**
 * Metadata calls on one folder (mkdir, a small file's write, listing, rename, unlink, rmdir, stat,
 * the folder's fsync), run inline — synchronously on the event loop — when the folder is on a
 * memory-backed file system (tmpfs, ramfs), and on libuv's thread pool elsewhere.
 *
 * Why: the same reason as inline I/O (src/util/inline-io.ts). On tmpfs such a call is a few
 * microseconds of kernel work, but its thread-pool round trip (queue, wake a pool thread, run it,
 * wake the loop) costs some 40–80 µs of CPU across two threads and as much again in latency. A job
 * on a small image makes about twenty of them (staging folder, owner record, listings, commit
 * rename, folder fsync, clean-up): in a batch of 2 MiB images they were a third of the CPU time
 * per image, spent on a second core that the other images of the batch then could not use.
 * On any other file system every call stays on the pool: a disk's metadata can wait for the
 * journal or the device, and nothing here may block the event loop (Ctrl-C is handled there).
 */
import { lstatSync, mkdirSync, readdirSync, type Stats, renameSync, rmdirSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { lstat, mkdir, readdir, rename, rmdir, stat, statfs, unlink, writeFile } from 'node:fs/promises';
import { fsyncDir, fsyncDirSync } from './atomic-file.js';
import { isMemoryFsType } from './inline-io.js';

/** What one statfs of a folder tells: whether it is memory-backed, and the bytes free to this user. */
export interface FolderFacts {
  memoryBacked: boolean;
  /** null when statfs failed (then the folder is treated as a disk and its free space as unknown). */
  freeBytes: number | null;
}

/** One statfs of `dir` (on the thread pool: a network file system may take its time to answer it). */
export async function folderFacts(dir: string): Promise<FolderFacts> {
  try {
    const s = await statfs(dir);
    return { memoryBacked: isMemoryFsType(s.type), freeBytes: Number(s.bavail) * Number(s.bsize) };
  } catch {
    return { memoryBacked: false, freeBytes: null };
  }
}

/** Folder metadata calls, inline when `inline` (the folder is memory-backed), else on the pool. */
export class FolderCalls {
  readonly inline: boolean;

  constructor(inline: boolean) {
    this.inline = inline;
  }

  async mkdir(path: string, mode: number): Promise<void> {
    if (this.inline) mkdirSync(path, { mode });
    else await mkdir(path, { mode });
  }

  /** Create or replace a small file (no fsync: callers that need one say so with fsyncDir/their own). */
  async writeFile(path: string, data: string): Promise<void> {
    if (this.inline) writeFileSync(path, data);
    else await writeFile(path, data);
  }

  async readdir(path: string): Promise<string[]> {
    return this.inline ? readdirSync(path) : readdir(path);
  }

  async rename(from: string, to: string): Promise<void> {
    if (this.inline) renameSync(from, to);
    else await rename(from, to);
  }

  async unlink(path: string): Promise<void> {
    if (this.inline) unlinkSync(path);
    else await unlink(path);
  }

  async rmdir(path: string): Promise<void> {
    if (this.inline) rmdirSync(path);
    else await rmdir(path);
  }

  /** Whether `path` exists (ENOENT: false; any other error is thrown). */
  async exists(path: string): Promise<boolean> {
    // Inline, a missing name is an answer, not an exception (Node builds each with a stack trace).
    if (this.inline) return statSync(path, { throwIfNoEntry: false }) !== undefined;
    try {
      await stat(path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** lstat of `path`, or undefined when it cannot be read (a missing name). */
  async lstat(path: string): Promise<Stats | undefined> {
    try {
      return this.inline ? lstatSync(path, { throwIfNoEntry: false }) : await lstat(path);
    } catch {
      return undefined;
    }
  }

  /** fsync of a folder, so that the renames in it are durable (src/util/atomic-file.ts's rule). */
  async fsyncDir(dir: string): Promise<void> {
    if (this.inline) fsyncDirSync(dir);
    else await fsyncDir(dir);
  }
}
