/**
 * The copy job's writes into its new disk, by the path outputWritePath chooses (direct-write.ts):
 * O_DIRECT for flat outputs on a disk, the page cache with write-behind for sparse outputs, the
 * page cache alone on tmpfs. Writes start in increasing offsets; only the direct path lets several
 * run at once (writeConcurrency).
 */
import type { VirtualDisk } from '../vmdk/index.js';
import { DIRECT_WRITE_CONCURRENCY, DirectWriter, directFlag, isFlatOutput, outputWritePath, type OutputWritePath } from './direct-write.js';
import { onMemoryFs } from './output-files.js';
import { WriteBehind } from './write-behind.js';

export interface OutputWriter {
  readonly path: OutputWritePath;
  /** Writes that may run at once (the engine's writeConcurrency): several only on the direct path. */
  readonly writeConcurrency: number;
  write(offset: number, data: Buffer): Promise<void>;
  /** Wait for what is in flight and close the second handles (call once, also after a failure). */
  close(): Promise<void>;
}

/** `folder`: where the disk's files are (the staging folder), for the file-system check. */
export async function openOutputWriter(disk: VirtualDisk, folder: string): Promise<OutputWriter> {
  const path = outputWritePath({ memoryFs: await onMemoryFs(folder), flat: isFlatOutput(disk), directAvailable: directFlag() !== undefined });
  const direct = path === 'direct' ? DirectWriter.open(disk) : null;
  if (direct) return { path, writeConcurrency: DIRECT_WRITE_CONCURRENCY, write: (offset, data) => direct.write(offset, data), close: () => direct.close() };
  const behind = path === 'write-behind' ? WriteBehind.open(disk) : null;
  return {
    path,
    writeConcurrency: 1,
    async write(offset, data) {
      await disk.write(offset, data);
      behind?.written(offset, data.length);
    },
    close: async () => behind?.close(),
  };
}
