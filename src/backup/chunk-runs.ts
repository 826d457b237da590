/**
 * Chunks cut into native runs: the one rule by which store-chunks.ts (backup create),
 * restore-chunks.ts (restore to a new flat disk) and hash-disk-chunks.ts (quick rollback) group
 * chunks into jobs of the addon (native/backup_chunks.cc). A run is up to NATIVE_RUN consecutive
 * chunks (in the order given) that each lie inside one file of a flat disk, the same file for the
 * whole run: one job reads (or writes) them by file descriptor. A chunk that no one file holds
 * (sparse disks, a chunk across two extents, a ZERO extent, no flat files at all) is a run of its
 * own with no file, for the VMDK layer.
 */
import { NATIVE_RUN } from '../util/native-backup.js';
import type { FlatFiles } from './flat-files.js';
import { CHUNK_SIZE } from './repository.js';

/** Chunks of a disk, in order; `fd` and `positions` when they lie in one file of the flat disk. */
export interface ChunkRun<T> {
  /** The caller's chunks (offsets, or offset and hash pairs); one when `fd` is null. */
  chunks: T[];
  /** The file that holds every chunk of the run, or null: the one chunk goes through the VMDK layer. */
  fd: number | null;
  /** Per chunk: its position in `fd` (empty when `fd` is null). */
  positions: number[];
  /** Per chunk: its length in bytes (CHUNK_SIZE, less for the last chunk of the disk). */
  lengths: number[];
}

/**
 * Cut `chunks` (increasing virtual offsets, `offsetOf` each) of a disk of `capacity` bytes into
 * runs. An async generator so that the offsets may come from a change bitmap read as it goes;
 * several workers may share it (its next() calls are queued).
 */
export async function* chunkRuns<T>(
  chunks: AsyncIterator<T> | Iterator<T>,
  offsetOf: (chunk: T) => number,
  capacity: number,
  flat: FlatFiles | null,
): AsyncGenerator<ChunkRun<T>> {
  let run: ChunkRun<T> | null = null;
  for (let n = await chunks.next(); !n.done; n = await chunks.next()) {
    const off = offsetOf(n.value);
    const length = Math.min(CHUNK_SIZE, capacity - off);
    const at = flat?.locate(off, length) ?? null;
    if (run && (at === null || at.fd !== run.fd || run.chunks.length === NATIVE_RUN)) {
      yield run;
      run = null;
    }
    if (at === null) {
      yield { chunks: [n.value], fd: null, positions: [], lengths: [length] };
      continue;
    }
    run ??= { chunks: [], fd: at.fd, positions: [], lengths: [] };
    run.chunks.push(n.value);
    run.positions.push(at.position);
    run.lengths.push(length);
  }
  if (run) yield run;
}
