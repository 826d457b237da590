/**
 * One chunk of a copy job moved by the addon in one job on libuv's pool (native/fs_transfer.cc):
 * pread from the input file into a native-owned buffer, XTS in place (or nothing), pwrite to the
 * output file. The copy jobs (src/pipeline/chunk-transfer.ts) keep several in flight, so both cores
 * run whole chunks and the event loop only hands them out and counts them.
 *
 * Only for buffers from allocateCipherBuffer: the pool thread works on the memory in place, and
 * only native-owned memory cannot be detached under it. A binary built before the call existed has
 * no transferChunk: transferAvailable() is then false and the copy jobs use the engine.
 */
import { loadNative, type NativeCipherHandle } from './native.js';

/** Where a chunk comes from and goes to: two open descriptors and positions in their files. */
export interface ChunkIo {
  fdIn: number;
  positionIn: number;
  /**
   * From allocateCipherBuffer (or a view into one); its length is the chunk's. Scratch: every 256 KiB
   * step goes through its first bytes (kept in the core's cache), so afterwards it holds no chunk.
   */
  buffer: Uint8Array;
  fdOut: number;
  positionOut: number;
}

/** The addon's call (see native/fs_transfer.cc). */
interface NativeTransfer {
  transferChunk(
    fdIn: number,
    positionIn: number,
    buffer: Uint8Array,
    fdOut: number,
    positionOut: number,
    cipher?: NativeCipherHandle | null,
    unitSize?: number,
    firstUnit?: number,
    decrypt?: boolean,
    cipher2?: NativeCipherHandle | null,
    unitSize2?: number,
    firstUnit2?: number,
  ): Promise<number>;
  readonly TRANSFER_MAX_BYTES: number;
}

let cached: NativeTransfer | null | undefined;

function nativeTransfer(): NativeTransfer | null {
  if (cached !== undefined) return cached;
  const addon = loadNative() as unknown as Partial<NativeTransfer>;
  cached = typeof addon.transferChunk === 'function' && typeof addon.TRANSFER_MAX_BYTES === 'number' ? (addon as NativeTransfer) : null;
  return cached;
}

/** Whether the addon has the call (false for a binary built before it). */
export function transferAvailable(): boolean {
  return nativeTransfer() !== null;
}

/** The largest chunk of one call (64 MiB), or 0 without the call. */
export function transferMaxBytes(): number {
  return nativeTransfer()?.TRANSFER_MAX_BYTES ?? 0;
}

/**
 * Move one chunk. Resolves the bytes read: the buffer's length when it was read, transformed and
 * written in full; fewer when the input ended first (then at most the 256 KiB steps before the end
 * were written: the caller reports a truncated input). Rejects with the
 * addon's error (code ERR_TRANSFER_IO, `errno`, `syscall` "pread" or "pwrite") when a system call
 * failed: the caller names the files. `cipher` (a live handle) encrypts, or with `decrypt` decrypts,
 * units of `unitSize` numbered from `firstUnit`; with `reencrypt`, `cipher` decrypts (whatever
 * `decrypt` says) and `reencrypt` then encrypts in its own units (a deep rekey).
 */
export function runTransfer(io: ChunkIo, cipher?: TransferCipherArgs, reencrypt?: TransferCipherUnits): Promise<number> {
  const native = nativeTransfer();
  if (!native) return Promise.reject(new Error('the native addon has no transferChunk (rebuild it)'));
  if (!cipher) return native.transferChunk(io.fdIn, io.positionIn, io.buffer, io.fdOut, io.positionOut);
  const { fdIn, positionIn, buffer, fdOut, positionOut } = io;
  return reencrypt
    ? native.transferChunk(
        fdIn,
        positionIn,
        buffer,
        fdOut,
        positionOut,
        cipher.handle,
        cipher.unitSize,
        cipher.firstUnit,
        true,
        reencrypt.handle,
        reencrypt.unitSize,
        reencrypt.firstUnit,
      )
    : native.transferChunk(fdIn, positionIn, buffer, fdOut, positionOut, cipher.handle, cipher.unitSize, cipher.firstUnit, cipher.decrypt);
}

/** A live cipher handle and the data units it works in. */
export interface TransferCipherUnits {
  handle: NativeCipherHandle;
  unitSize: number;
  firstUnit: number;
}

export interface TransferCipherArgs extends TransferCipherUnits {
  decrypt: boolean;
}
