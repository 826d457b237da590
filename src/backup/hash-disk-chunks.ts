/**
 * The SHA-256 of a flat disk's chunks, read and hashed by the addon (hashChunks: one job on libuv's
 * pool per run of chunks (chunk-runs.ts), NATIVE_IN_FLIGHT runs at once, so every core hashes and no chunk byte
 * crosses into JavaScript). The quick rollback without a change bitmap (restore-over.ts) compares
 * every chunk of the disk with the point's; on the JS thread that hashing ran on one core.
 *
 * Each chunk is reported as soon as its run is hashed, not at the end: the rollback rewrites the
 * chunks that differ while the rest are still being hashed.
 *
 * Only chunks that lie in one file of a flat disk are hashed here; the others (sparse disks, chunks
 * across two extents, a file that ends early) are reported unhashed and go through the VMDK layer
 * as before, which reports any error in its own words.
 */
import type { VirtualDisk } from '../vmdk/index.js';
import { abortError } from '../pipeline/errors.js';
import { NATIVE_IN_FLIGHT, STORE_PRESENT, STORE_ZERO, nativeBackup, nativeBackupError } from '../util/native-backup.js';
import { runWorkers } from '../util/run-workers.js';
import { chunkRuns } from './chunk-runs.js';
import { openFlatFiles } from './flat-files.js';

/**
 * What hashFlatChunks reports for one chunk offset: its SHA-256 (hex), null when it is all zeros,
 * or undefined when the addon did not hash it (the caller reads it through the VMDK layer).
 */
export type ChunkFound = (offset: number, hash: string | null | undefined) => void;

/**
 * Hash the chunks of `disk` at `offsets` (increasing), reporting every offset exactly once to
 * `found` as its run finishes. False, with nothing reported, when the path does not apply (no
 * addon, not a flat disk). Stops early when `stopped()` turns true (another worker of the caller's
 * job failed) or `signal` is aborted (rejects).
 */
export async function hashFlatChunks(
  disk: VirtualDisk,
  offsets: readonly number[],
  found: ChunkFound,
  o: { signal?: AbortSignal | undefined; stopped?: () => boolean } = {},
): Promise<boolean> {
  const native = nativeBackup();
  if (!native?.hashChunks || offsets.length === 0) return false;
  const hashChunks = native.hashChunks.bind(native);
  const flat = await openFlatFiles(disk, 'read');
  if (!flat) return false;
  const runs = chunkRuns(offsets[Symbol.iterator](), (off) => off, disk.capacity, flat);
  const callerStopped = o.stopped ?? (() => false);
  try {
    await runWorkers(NATIVE_IN_FLIGHT, async (stopped) => {
      for (let n = await runs.next(); !n.done && !stopped() && !callerStopped(); n = await runs.next()) {
        if (o.signal?.aborted) throw abortError(o.signal, `the rollback of ${disk.path} (run vmseal resume ${disk.path} to finish it)`);
        const run = n.value;
        if (run.fd === null) {
          found(run.chunks[0]!, undefined); // left to the VMDK layer
          continue;
        }
        let result: Buffer;
        try {
          result = await hashChunks(run.fd, run.positions, run.lengths);
        } catch (err) {
          throw nativeBackupError(err);
        }
        let i = 0;
        for (; i < run.chunks.length; i++) {
          const status = result[i * 33]!;
          if (status === STORE_ZERO) found(run.chunks[i]!, null);
          else if (status === STORE_PRESENT) found(run.chunks[i]!, result.toString('hex', i * 33 + 1, i * 33 + 33));
          else break; // the file ended early: the rest of the run goes through the VMDK layer
        }
        for (; i < run.chunks.length; i++) found(run.chunks[i]!, undefined);
      }
    });
  } finally {
    await flat.close();
  }
  return true;
}
