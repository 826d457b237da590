import { readSync, writeSync } from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { statfs } from 'node:fs/promises';
import { noProgressError } from './file-io.js';
import { nativeNowait } from './native-nowait.js';

/**
 * Inline I/O: small positional reads and writes done synchronously on the event loop, when they
 * cannot wait for a device, instead of on libuv's thread pool.
 *
 * Why: a 4 KiB request served from memory costs about a microsecond of copying, but the thread-pool
 * round trip around it (queue, wake a pool thread, run it, wake the loop) costs two context switches
 * and several futex calls, and when the server is pinned to one core (as a host pins a VM's I/O
 * thread) the pool thread takes that core from the loop each time. At queue depth 16 that handoff
 * was a third of `vmseal serve`'s time (docs/performance.md, "Serving").
 *
 * When: only up to INLINE_IO_MAX bytes (a larger copy is worth moving off the loop, and matches the
 * size below which the data cipher runs synchronously too), and only when the call cannot block:
 * - files on tmpfs or ramfs (memory-backed: no device behind them): reads and writes;
 * - other files: reads through preadv2(RWF_NOWAIT) (native/fs_nowait.cc), which returns at once
 *   with "would block" unless every byte is in the page cache; the read then goes to the pool as
 *   before. Writes on such files stay on the pool: a buffered write can wait for dirty-page
 *   throttling or the journal, and Linux offers no non-blocking buffered write on ext4 or tmpfs.
 */

/** The largest read or write done inline (bytes). */
export const INLINE_IO_MAX = 64 * 1024;

/**
 * The bound in use: INLINE_IO_MAX, or 0 (every read and write through the pool, as before inline
 * I/O) when the environment has VMSEAL_INLINE_IO=0 — for measuring one against the other (the serve
 * benchmark does) and as a way back should a file system block where it should not. Read once.
 */
export const inlineIoSettings = { max: process.env.VMSEAL_INLINE_IO === '0' ? 0 : INLINE_IO_MAX };

/**
 * Whether a file's metadata calls — its fstat, a size change, fsync and fdatasync — run inline:
 * only on a memory-backed file (tmpfs, ramfs), where each is a microsecond of kernel work and a
 * pool round trip tens of microseconds of CPU over two threads; never with VMSEAL_INLINE_IO=0.
 */
export function inlineMetadataCalls(memoryBacked: boolean): boolean {
  return memoryBacked && inlineIoSettings.max > 0;
}

/** statfs(2) f_type of the memory-backed file systems (linux/magic.h). */
export const TMPFS_MAGIC = 0x01021994;
export const RAMFS_MAGIC = 0x858458f6;

/** Whether a statfs f_type is a memory-backed file system's: its page cache is the storage itself. */
export function isMemoryFsType(type: number): boolean {
  return type === TMPFS_MAGIC || type === RAMFS_MAGIC;
}

/**
 * Whether `path` lives on a memory-backed file system (tmpfs, ramfs). There, writeback has nothing
 * to do and O_DIRECT saves no copy. False when statfs fails (the caller then treats it as a disk,
 * which is always correct, only perhaps slower).
 */
export async function isMemoryBacked(path: string): Promise<boolean> {
  try {
    return isMemoryFsType((await statfs(path)).type);
  } catch {
    return false;
  }
}

/**
 * Read `target.length` bytes (at most INLINE_IO_MAX) at `position` of `fd` without blocking on a
 * device: the bytes read (fewer only at the end of the file), or undefined when the read must go
 * through the thread pool (not memory-backed and not all in the page cache, or no native support).
 * OS errors are thrown as Node's (code, errno, syscall).
 */
export function readInline(fd: number, target: Uint8Array, position: number, memoryBacked: boolean): number | undefined {
  if (!memoryBacked) {
    const nowait = nativeNowait();
    if (nowait === null) return undefined;
    let n: number;
    try {
      n = nowait.preadNowait(fd, target, position);
    } catch (err) {
      throw asErrnoException(err);
    }
    // A short count may be the end of the file or a partly cached range: the pool read tells which.
    return n === target.length ? n : undefined;
  }
  let done = 0;
  while (done < target.length) {
    const n = readSync(fd, target, done, target.length - done, position + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

/** Write all of `data` at `position` of a memory-backed file's `fd` (the caller checked both). */
export function writeInline(fd: number, data: Uint8Array, position: number): void {
  let done = 0;
  while (done < data.length) {
    const n = writeSync(fd, data, done, data.length - done, position + done);
    if (n <= 0) throw noProgressError(data.length - done, position + done);
    done += n;
  }
}

/** The native call's ERR_NOWAIT_IO as Node's own fs errors look (code EIO, errno, syscall), for ioError(). */
function asErrnoException(err: unknown): unknown {
  const errno = (err as { errno?: unknown }).errno;
  if (!(err instanceof Error) || typeof errno !== 'number') return err;
  const e = new Error(err.message) as NodeJS.ErrnoException;
  e.code = getSystemErrorName(-errno);
  e.errno = -errno;
  e.syscall = 'preadv2';
  return e;
}
