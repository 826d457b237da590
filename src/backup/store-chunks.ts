/**
 * The data path of `backup create`: read each chunk of the disk at the given offsets, skip the
 * all-zero ones (holes), hash the others and store those the repository lacks. Two ways, chosen per
 * chunk:
 *
 * - **Native runs** (flat disks: raw images, FLAT/VMFS extents; flat-files.ts): up to NATIVE_RUN
 *   chunks lying in one file (chunk-runs.ts) are one job of the addon (native/backup_chunks.cc, on libuv's pool):
 *   pread, zero check, SHA-256, chunk file written (temp, fsync, link) — no byte through
 *   JavaScript, no hop back to the event loop per step. NATIVE_IN_FLIGHT runs at once keep every
 *   core hashing.
 * - **Through the VMDK layer** (sparse disks, snapshot chains, a chunk across two extents, a file
 *   that ended early): the JS thread reads into a shared buffer and a worker thread hashes and
 *   stores it (chunk-writers.ts), PARALLEL chunks at once.
 *
 * Both write chunk files with the same steps (src/util/atomic-file.ts, createFileAtomicSync); the
 * fsync of the chunk folders is the caller's, before the manifest. `VMSEAL_BACKUP_CHUNK_THREADS=0`
 * (the crash tests' fault-injecting file layer sees only the JS thread's calls) and
 * `VMSEAL_BACKUP_NATIVE=0` turn the native runs off.
 */
import type { VirtualDisk } from '../vmdk/index.js';
import { abortError } from '../pipeline/errors.js';
import { runWorkers } from '../util/run-workers.js';
import { tempSuffix } from '../util/atomic-file.js';
import { NATIVE_IN_FLIGHT, nativeBackup, nativeBackupError, STORE_PRESENT, STORE_WRITTEN, STORE_ZERO, type NativeBackup } from '../util/native-backup.js';
import { chunkRuns, type ChunkRun } from './chunk-runs.js';
import { ChunkWriters } from './chunk-writers.js';
import { openFlatFiles } from './flat-files.js';
import { CHUNK_SIZE, type Repository } from './repository.js';

/** Chunks read, hashed and stored at once through the VMDK layer: reads overlap hashing, memory bounded. */
const PARALLEL = 8;

const ZERO = Buffer.alloc(CHUNK_SIZE);

/** What the data path reports for each chunk. */
export interface StoreTally {
  /** A chunk of `length` bytes was read. */
  read(length: number): void;
  /** A non-zero chunk at `off` is stored under `hash` (`wrote`: by this backup). */
  stored(off: number, hash: string, wrote: boolean, length: number): void;
}

/**
 * Store the chunks of `disk` at `offsets` (increasing) into `repo`, reporting each to `tally`.
 * `fewChunks`: the chunks that go through the VMDK layer are stored on the JS thread (no writer
 * threads to start for a handful of chunks).
 */
export async function storeChunks(
  repo: Repository,
  disk: VirtualDisk,
  offsets: AsyncIterator<number> | Iterator<number>,
  tally: StoreTally,
  o: { signal?: AbortSignal | undefined; fewChunks?: boolean } = {},
): Promise<void> {
  const signal = o.signal;
  const native = process.env.VMSEAL_BACKUP_CHUNK_THREADS === '0' ? null : nativeBackup();
  const flat = native ? await openFlatFiles(disk, 'read') : null;
  let writers: ChunkWriters | undefined; // started on the first chunk that needs them
  const buffers: SharedArrayBuffer[] = [];
  /** One chunk through the VMDK layer and a chunk writer thread. */
  const throughLayer = async (off: number): Promise<void> => {
    writers ??= o.fewChunks ? new ChunkWriters(repo, 0) : new ChunkWriters(repo);
    const shared = buffers.pop() ?? new SharedArrayBuffer(CHUNK_SIZE);
    try {
      const data = Buffer.from(shared, 0, Math.min(CHUNK_SIZE, disk.capacity - off));
      await disk.readInto(off, data);
      tally.read(data.length);
      if (data.equals(ZERO.subarray(0, data.length))) return;
      const { hash, wrote } = await writers.store(shared, data.length);
      tally.stored(off, hash, wrote, data.length);
    } finally {
      buffers.push(shared);
    }
  };
  const source = chunkRuns(offsets, (off) => off, disk.capacity, flat);
  let done = false;
  // Every worker has stopped (none goes on reading or storing) before the threads, files and locks are released.
  try {
    await runWorkers(flat ? NATIVE_IN_FLIGHT : PARALLEL, async (stopped) => {
      for (;;) {
        if (signal?.aborted) throw abortError(signal, `the backup of ${disk.path}`);
        // One generator shared by the workers: next() calls are queued by the generator itself.
        if (done || stopped()) return;
        const n = await source.next();
        if (n.done) {
          done = true;
          return;
        }
        const b = n.value;
        if (b.fd === null) await throughLayer(b.chunks[0]!);
        else await nativeRun(native!, repo, b, tally, throughLayer);
      }
    });
  } finally {
    await writers?.close();
    await flat?.close();
  }
}

/** One native run; chunks it did not reach (the file ended early) go through the VMDK layer, which reports it. */
async function nativeRun(
  native: NativeBackup,
  repo: Repository,
  b: ChunkRun<number>,
  tally: StoreTally,
  throughLayer: (off: number) => Promise<void>,
): Promise<void> {
  const tmp = b.chunks.map(() => tempSuffix());
  let result: Buffer;
  try {
    result = await native.storeChunks(b.fd!, b.positions, b.lengths, repo.chunkRoot, tmp);
  } catch (err) {
    throw nativeBackupError(err);
  }
  for (let i = 0; i < b.chunks.length; i++) {
    const status = result[i * 33]!;
    const length = b.lengths[i]!;
    if (status === STORE_ZERO) {
      tally.read(length);
    } else if (status === STORE_PRESENT || status === STORE_WRITTEN) {
      tally.read(length);
      tally.stored(b.chunks[i]!, result.toString('hex', i * 33 + 1, i * 33 + 33), status === STORE_WRITTEN, length);
    } else {
      for (let j = i; j < b.chunks.length; j++) await throughLayer(b.chunks[j]!);
      return;
    }
  }
}
