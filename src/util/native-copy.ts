import { loadNativeAddon } from './native-addon.js';

/**
 * The kernel-side copy of the native addon (native/fs_copy.cc): Linux copy_file_range between two
 * open files at explicit positions, on libuv's thread pool — one copy inside the kernel (an
 * in-kernel splice on tmpfs/ext4, a reflink on XFS/btrfs) instead of a read and a write through
 * user space.
 */
export interface NativeCopy {
  /**
   * Copy `length` bytes (at most COPY_RANGE_MAX_BYTES) from `positionIn` of `fdIn` to `positionOut`
   * of `fdOut`. Resolves the bytes copied: `length`, or fewer when the source ended first (0 when it
   * ends at `positionIn`) or the kernel refused the rest; -1 when nothing was copied because the
   * kernel cannot copy between these files (EXDEV, ENOSYS, EOPNOTSUPP, EINVAL; not Linux): the
   * caller reads and writes instead. Rejects (code ERR_COPY_RANGE_IO, `errno`, `syscall`) on any
   * other failure (EIO, ENOSPC, EBADF…).
   */
  copyFileRange(fdIn: number, positionIn: number, fdOut: number, positionOut: number, length: number): Promise<number>;
  /** The largest `length` of one call (64 MiB): one call holds a pool thread briefly. */
  readonly COPY_RANGE_MAX_BYTES: number;
}

let cached: NativeCopy | null | undefined;

/** The call, or null when the binary predates it (the copy jobs then read and write as before). */
export function nativeCopy(): NativeCopy | null {
  if (cached !== undefined) return cached;
  const addon = loadNativeAddon() as Partial<NativeCopy>;
  cached = typeof addon.copyFileRange === 'function' && typeof addon.COPY_RANGE_MAX_BYTES === 'number' ? (addon as NativeCopy) : null;
  return cached;
}
