/**
 * The SHA-256 of a flat disk's chunks, read and hashed by the addon (hashChunks: one job on libuv's
 * pool per run of chunks (chunk-runs.ts), NATIVE_IN_FLIGHT runs at once, so every core hashes and no chunk byte
 * crosses into JavaScript). The quick rollback without a change bitmap (restore-over.ts) compares
 * every chunk of the disk with the point's; on the JS thread that hashing ran on one core.
 *
 * Only chunks that lie in one file of a flat disk are hashed here; the others (sparse disks, chunks
 * across two extents, a file that ends early) are left out of the result and go through the VMDK
 * layer as before, which reports any error in its own words.
 */
import type { VirtualDisk } from '../vmdk/index.js';
import { abortError } from '../pipeline/errors.js';
import { NATIVE_IN_FLIGHT, STORE_PRESENT, STORE_ZERO, nativeBackup, nativeBackupError } from '../util/native-backup.js';
import { runWorkers } from '../util/run-workers.js';
import { chunkRuns } from './chunk-runs.js';
import { openFlatFiles } from './flat-files.js';

/** Per chunk offset: its SHA-256 (hex), or null when it is all zeros. Null when the path does not apply. */
export async function hashFlatChunks(
  disk: VirtualDisk,
  offsets: readonly number[],
  signal: AbortSignal | undefined,
): Promise<Map<number, string | null> | null> {
  const native = nativeBackup();
  if (!native?.hashChunks || offsets.length === 0) return null;
  const hashChunks = native.hashChunks.bind(native);
  const flat = await openFlatFiles(disk, 'read');
  if (!flat) return null;
  const known = new Map<number, string | null>();
  const runs = chunkRuns(offsets[Symbol.iterator](), (off) => off, disk.capacity, flat);
  try {
    await runWorkers(NATIVE_IN_FLIGHT, async (stopped) => {
      for (let n = await runs.next(); !n.done && !stopped(); n = await runs.next()) {
        if (signal?.aborted) throw abortError(signal, `the rollback of ${disk.path} (run vmseal resume ${disk.path} to finish it)`);
        const run = n.value;
        if (run.fd === null) continue; // left to the VMDK layer
        let result: Buffer;
        try {
          result = await hashChunks(run.fd, run.positions, run.lengths);
        } catch (err) {
          throw nativeBackupError(err);
        }
        for (let i = 0; i < run.chunks.length; i++) {
          const status = result[i * 33]!;
          if (status === STORE_ZERO) known.set(run.chunks[i]!, null);
          else if (status === STORE_PRESENT) known.set(run.chunks[i]!, result.toString('hex', i * 33 + 1, i * 33 + 33));
          else break; // the file ended early: the rest of the run goes through the VMDK layer
        }
      }
    });
  } finally {
    await flat.close();
  }
  return known;
}
