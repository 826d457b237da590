import { loadNativeAddon } from './native-addon.js';

/**
 * The write-behind call of the native addon (native/fs_writeback.cc): start the kernel's writeback
 * of a file's dirty pages without waiting for it (Linux sync_file_range with SYNC_FILE_RANGE_WRITE),
 * on libuv's thread pool. It makes nothing durable: an fsync is still needed, and finds less to do.
 */
export interface NativeWriteback {
  /**
   * Start writeback of [offset, offset + length) of the open file `fd` (length 0: to the end of the
   * file). Resolves true when started, false where the platform or file system does not support it;
   * rejects (code ERR_WRITEBACK_IO) on an I/O error.
   */
  writebackStart(fd: number, offset: number, length: number): Promise<boolean>;
}

let cached: NativeWriteback | null | undefined;

/** The call, or null when the binary predates it (write-behind is an optimisation: jobs go on without it). */
export function nativeWriteback(): NativeWriteback | null {
  if (cached !== undefined) return cached;
  const addon = loadNativeAddon() as Partial<NativeWriteback>;
  cached = typeof addon.writebackStart === 'function' ? (addon as NativeWriteback) : null;
  return cached;
}
