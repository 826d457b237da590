import { loadNativeAddon } from './native-addon.js';

/**
 * The non-blocking read of the native addon (native/fs_nowait.cc): Linux preadv2 with RWF_NOWAIT,
 * run synchronously on the calling thread. It copies from the page cache and never waits for a
 * device: where a byte is not cached (or a lock is held) it stops, and where nothing could be read
 * that way it reports "would block". Used by inline-io.ts.
 */
export interface NativeNowait {
  /**
   * Read up to target.length bytes at `position` of the open file `fd` into `target`: the bytes
   * read (0 at or past the end of the file; fewer than asked at the end of the file or where the
   * cached part ends), or -1 when it would block or the platform or file system does not support
   * it (the caller then reads through the thread pool). Throws an Error with Node's `code` (EIO,
   * EBADF…), `errno` and `syscall` on an I/O error.
   */
  preadNowait(fd: number, target: Uint8Array, position: number): number;
}

let cached: NativeNowait | null | undefined;

/** The call, or null when the binary predates it (inline reads are an optimisation: reads go to the pool without it). */
export function nativeNowait(): NativeNowait | null {
  if (cached !== undefined) return cached;
  let addon: Partial<NativeNowait>;
  try {
    addon = loadNativeAddon() as Partial<NativeNowait>;
  } catch {
    addon = {};
  }
  cached = typeof addon.preadNowait === 'function' ? (addon as NativeNowait) : null;
  return cached;
}
