import { availableParallelism, constants } from 'node:os';
import { loadNativeAddon } from './native-addon.js';

/**
 * The backup data path of the native addon (native/backup_chunks.cc): a run of chunks of a flat
 * disk stored into, or restored from, a backup repository as one job on libuv's pool — read,
 * all-zero check, SHA-256 and the chunk file's write (or the chunk file's read, hash check and the
 * disk's write), with no chunk byte crossing into JavaScript.
 */
export interface NativeBackup {
  /**
   * For each chunk i: read `lengths[i]` bytes at `positions[i]` of `fdIn`; all zeros is a hole;
   * else store them as `<chunkRoot>/<xx>/<sha256>` unless present (temp file `<final><tmpSuffixes[i]>`,
   * fsynced, hard-linked; the folder fsync is the caller's). Resolves 33 bytes per chunk: a status
   * (STORE_ZERO, STORE_PRESENT, STORE_WRITTEN, STORE_SHORT: the input ended, the run stopped there;
   * STORE_NOT_REACHED) and the SHA-256. At most BACKUP_CHUNKS_MAX chunks. Rejects with code
   * ERR_BACKUP_CHUNK_IO, `errno`, `syscall`, `path` when a system call fails.
   */
  storeChunks(fdIn: number, positions: number[], lengths: number[], chunkRoot: string, tmpSuffixes: string[]): Promise<Buffer>;
  /**
   * storeChunks without the store: the same reads, zero check and SHA-256, nothing written; status
   * STORE_PRESENT means hashed. Absent from binaries that predate it.
   */
  hashChunks?(fdIn: number, positions: number[], lengths: number[]): Promise<Buffer>;
  /**
   * For each chunk i: read the file `paths[i]`, check its length and SHA-256 (`hashes`, 32 bytes per
   * chunk), then write its non-zero `block`s at `positions[i]` of `fdOut`. Stops at the first bad
   * chunk (`failed` its index, `reason`, its `size`), nothing of it written; 'type': not a regular file.
   */
  restoreChunks(
    fdOut: number,
    positions: number[],
    lengths: number[],
    paths: string[],
    hashes: Buffer,
    block: number,
  ): Promise<{ bytes: number; failed: number; reason: '' | 'missing' | 'type' | 'size' | 'hash'; size: number }>;
  readonly BACKUP_CHUNKS_MAX: number;
}

/** Chunks of 1 MiB in one job: 16 MiB, so that a job's hand-offs are noise and cancellation stays quick. */
export const NATIVE_RUN = 16;
/**
 * Jobs a caller keeps in flight: one per core (at least 2, at most 4: libuv's pool size), so that
 * every core hashes while the JS thread only hands out runs.
 */
export const NATIVE_IN_FLIGHT = Math.min(4, Math.max(2, availableParallelism()));

export const STORE_ZERO = 0;
export const STORE_PRESENT = 1;
export const STORE_WRITTEN = 2;
export const STORE_SHORT = 3;
export const STORE_NOT_REACHED = 255;

let cached: NativeBackup | null | undefined;

/**
 * The calls, or null when the binary predates them or `VMSEAL_BACKUP_NATIVE=0` (the backup then
 * reads through the VMDK layer and hashes in worker threads, as before).
 */
export function nativeBackup(): NativeBackup | null {
  if (process.env.VMSEAL_BACKUP_NATIVE === '0') return null;
  if (cached !== undefined) return cached;
  const addon = loadNativeAddon() as Partial<NativeBackup>;
  cached = typeof addon.storeChunks === 'function' && typeof addon.restoreChunks === 'function' ? (addon as NativeBackup) : null;
  return cached;
}

const ERRNO_NAMES = new Map<number, string>(Object.entries(constants.errno).map(([name, n]) => [n, name]));

/**
 * A rejection of storeChunks/restoreChunks as the file-system error node:fs would have thrown
 * (`code` the errno's name, e.g. ENOSPC, with `errno`, `syscall` and `path`), so that callers see
 * the same errors whichever path stored the chunk.
 */
export function nativeBackupError(err: unknown): unknown {
  const e = err as { code?: unknown; errno?: unknown; syscall?: unknown; path?: unknown; message?: unknown };
  if (e?.code !== 'ERR_BACKUP_CHUNK_IO' || typeof e.errno !== 'number') return err;
  const name = ERRNO_NAMES.get(e.errno) ?? 'EIO';
  // Node's shape, "ENOSPC: no space left on device, write '/path'", from "<syscall> failed: <strerror>".
  const why = String(e.message).replace(/^.* failed: /, '');
  const out = new Error(`${name}: ${why.charAt(0).toLowerCase()}${why.slice(1)}, ${String(e.syscall)} '${String(e.path)}'`) as NodeJS.ErrnoException;
  out.code = name;
  out.errno = -e.errno;
  out.syscall = String(e.syscall);
  out.path = String(e.path);
  return out;
}
