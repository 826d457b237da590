/**
 * The copy job's writes into its new disk, by the path outputWritePath chooses (direct-write.ts):
 * O_DIRECT for flat outputs on a disk, the page cache with write-behind for sparse outputs, the
 * page cache alone on tmpfs. Writes start in increasing offsets; writes into flat files (the direct
 * path, and flat outputs on tmpfs) may run several at once (writeConcurrency): positional writes
 * into a flat file do not depend on each other's order. Sparse outputs keep one at a time (the VMDK
 * layer allocates grains in order).
 */
import type { VirtualDisk } from '../vmdk/index.js';
import { DIRECT_WRITE_CONCURRENCY, DirectWriter, directFlag, isFlatOutput, outputWritePath, type OutputWritePath } from './direct-write.js';
import { isMemoryBacked } from '../util/inline-io.js';
import { WriteBehind } from './write-behind.js';

/**
 * Chunks written at once into a flat output on tmpfs. tmpfs serializes writes into one file (the
 * inode lock), so the writes of a copy job are its critical path there: with one at a time, each
 * chunk's write waited for the event loop to come back from the last one (wake the loop, run the
 * callbacks, queue the next write, wake a pool thread). With a second write queued, a pool thread
 * is already waiting on the lock when the first one releases it.
 */
export const MEMORY_WRITE_CONCURRENCY = 2;

export interface OutputWriter {
  readonly path: OutputWritePath;
  /** Writes that may run at once (the engine's writeConcurrency): several only on the direct path. */
  readonly writeConcurrency: number;
  write(offset: number, data: Buffer): Promise<void>;
  /** Wait for what is in flight and close the second handles (call once, also after a failure). */
  close(): Promise<void>;
}

/**
 * `folder`: where the disk's files are (the staging folder), for the file-system check; `memoryFs`:
 * that check's answer when the caller already has it (a job's statfs of its output folder).
 */
export async function openOutputWriter(disk: VirtualDisk, folder: string, memoryFs?: boolean): Promise<OutputWriter> {
  const flat = isFlatOutput(disk);
  const path = outputWritePath({ memoryFs: memoryFs ?? (await isMemoryBacked(folder)), flat, directAvailable: directFlag() !== undefined });
  const direct = path === 'direct' ? DirectWriter.open(disk) : null;
  if (direct) return { path, writeConcurrency: DIRECT_WRITE_CONCURRENCY, write: (offset, data) => direct.write(offset, data), close: () => direct.close() };
  const behind = path === 'write-behind' ? WriteBehind.open(disk) : null;
  return {
    path,
    writeConcurrency: path === 'page-cache' && flat ? MEMORY_WRITE_CONCURRENCY : 1,
    async write(offset, data) {
      await disk.write(offset, data);
      behind?.written(offset, data.length);
    },
    close: async () => behind?.close(),
  };
}
