/**
 * `backup restore REPO POINT --over DISK`: quick rollback. DISK must be the disk the point was taken
 * of (same disk id, subformat, capacity, grain and extent sizes); each of its chunks is compared with
 * the point's (by SHA-256, or with a change bitmap byte for byte with the point's hash-checked chunk),
 * and only the chunks that differ are written (a chunk that is a hole in
 * the point is deallocated in a sparse disk, zeroed in a flat one); then the point's descriptor.
 * No key is needed.
 *
 * The job is one journaled job of the pipeline's journal (`<disk>.vmseal-journal`, operation
 * `restore-over`, journal.ts):
 *   1. the journal is created; it names the repository and the point, and holds the descriptor
 *      "during" (DISK's own, plus `encryption.job = restore-over`) and "final" (below);
 *   2. "during" is written: from here on, and as long as the journal exists, every vmseal job and
 *      src/disk refuse the disk with ERR_INTERRUPTED_JOB;
 *   3. the chunks that differ from the point are rewritten, then the disk is flushed;
 *   4. "final" is written, the journal removed.
 * The target of every chunk is fixed (the point's, checked by hash before it is written), so the job
 * needs no copy of what it overwrites: resume (resumeBackupRestore, `vmseal resume`) writes "during"
 * again, repeats the whole comparison — the chunks already rolled back now compare equal — and
 * finishes. With a change bitmap of the disk (change-bitmap.ts) that is valid and counts from this
 * very point, step 3 compares only the chunks it marks: the others are the point's. A resume always
 * compares every chunk (step 2 changed the disk's generation, so the bitmap no longer applies).
 * The disk is locked exclusively (its lock and every file name it has) and the repository
 * shared (a prune cannot remove a chunk under the job) for the whole job, and for a resume.
 *
 * The "final" descriptor is the point's, on DISK's extent lines, except two lines: the KeySafe stays
 * DISK's current one (a shallow rekey since the point — after a leaked KEK, say — is not undone: the
 * lockers are the disk's access policy, not its content; the DEK is the same, as the disk id says),
 * and a new `ddb.vmseal.restoredFrom` line makes the next backup continue from the point (lineage.ts).
 */
import { basename } from 'node:path';
import { encryptionOf } from '../disk/for-pipeline.js';
import { Descriptor, openDisk, type VirtualDisk } from '../vmdk/index.js';
import { isCommitJournal } from '../pipeline/commit-journal.js';
import { Journal, journalPathOf, type JournalHeader, type JournalParams } from '../pipeline/journal.js';
import { acquireLock, NameReservations } from '../pipeline/lock.js';
import { diskFiles, realDiskPath } from '../pipeline/paths.js';
import { locateDescriptor, removeStaleDescriptorTemps, writeDescriptor } from '../pipeline/descriptor-io.js';
import { abortError } from '../pipeline/errors.js';
import { expected } from '../errors.js';
import { runWorkers } from '../util/run-workers.js';
import { WorkQueue } from '../util/work-queue.js';
import { allocatedChunks } from './create.js';
import { chainLayers } from './chain-point.js';
import { BackupError } from './errors.js';
import { newRestoredFrom, RESTORED_FROM_KEY } from './lineage.js';
import type { PointLayer, PointManifest } from './manifest.js';
import { readPoint, resolvePoint } from './points.js';
import { CHUNK_SIZE, openRepository, sha256Hex, type Repository } from './repository.js';
import { putChunkKeepingHoles } from './chunk-blocks.js';
import { isChanged, readChangeBitmap } from './change-bitmap.js';
import { hashFlatChunks } from './hash-disk-chunks.js';

export interface RestoreOverOptions {
  /** With point `latest` or a name: look only at this history's points. */
  history?: string;
  /** Wait this long for a repository lock held exclusively by a prune (default: `0`). */
  lockWaitMs?: number;
  signal?: AbortSignal;
}

export interface RestoreOverResult {
  point: string;
  /** The disk rolled back. */
  path: string;
  /** Chunks that differed from the point's and were rewritten (or deallocated, for the point's holes). */
  chunksWritten: number;
  /** Chunks compared and found equal to the point's (not written). */
  chunksSame: number;
  bytesWritten: number;
  /** True when this call finished a rollback that an earlier one began. */
  resumed: boolean;
}

const JOB = 'restore-over';
const ZERO = Buffer.alloc(CHUNK_SIZE);

function arg(what: string, name: string, value: unknown): BackupError {
  return new BackupError('ERR_INVALID_ARGUMENT', expected(what, name, value));
}

/** The journal's MAC key material: the repository id's 16 bytes (see journal.ts, `restore-over`). */
function journalKey(repo: Repository): Buffer {
  return Buffer.from(repo.id, 'hex');
}

/** Roll the disk at `diskPath` back to point `point` (an id, a name, or `latest`) of the repository at `repoPath`. */
export async function restoreBackupOver(repoPath: string, point: string, diskPath: string, options: RestoreOverOptions = {}): Promise<RestoreOverResult> {
  if (typeof point !== 'string' || point === '') throw arg('a point id, name or `latest`', 'point', point);
  if (typeof diskPath !== 'string' || diskPath === '' || diskPath.includes('\0')) throw arg('a file path', 'disk', diskPath);
  if (options === null || typeof options !== 'object') throw arg('an object', 'options', options);
  const waitMs = options.lockWaitMs ?? 0;
  if (!Number.isSafeInteger(waitMs) || waitMs < 0) throw arg('a non-negative integer', 'options.lockWaitMs', waitMs);
  const repo = await openRepository(repoPath);
  const repoLock = await repo.lock('shared', 'restore --over', waitMs);
  try {
    const m = await resolvePoint(repo, point, options.history);
    const layer = checkPoint(m);
    const p = await realDiskPath(diskPath);
    return await withDisk(p, async () => {
      const pending = await Journal.open(p);
      if (pending) {
        const op = pending.header.operation;
        await pending.close();
        throw new BackupError('ERR_INTERRUPTED_JOB', `${p} has an unfinished ${op} job (journal ${journalPathOf(p)}); finish it first (vmseal resume ${p})`);
      }
      const { header, changed } = await planRollback(repo, m, layer, p);
      const journal = await Journal.create(p, header, journalKey(repo));
      return runRollback(p, journal, repo, m, layer, false, options.signal, changed);
    });
  } finally {
    repoLock.release();
  }
}

/**
 * Finish a rollback that was interrupted (killed, power loss, an I/O error): null when the disk has
 * no rollback journal. The repository must be where the journal says (it was there when the job
 * began).
 */
export async function resumeBackupRestore(diskPath: string, options: { lockWaitMs?: number; signal?: AbortSignal } = {}): Promise<RestoreOverResult | null> {
  if (typeof diskPath !== 'string' || diskPath === '' || diskPath.includes('\0')) throw arg('a file path', 'disk', diskPath);
  const p = await realDiskPath(diskPath);
  // A snapshot commit's journal lies at the same path: not a rollback, and Journal.open refuses it.
  if (await isCommitJournal(p)) return null;
  const peek = await Journal.open(p);
  if (!peek) return null;
  const restore = peek.header.operation === JOB ? peek.header.restore : undefined;
  await peek.close();
  if (peek.header.operation !== JOB) return null;
  if (!restore || typeof restore.repository !== 'string' || typeof restore.point !== 'string') {
    throw new BackupError('ERR_BACKUP_MANIFEST', `the rollback journal ${journalPathOf(p)} names no repository and point; it cannot be resumed`);
  }
  const repo = await openRepository(restore.repository).catch((err: unknown) => {
    throw new BackupError(
      'ERR_BACKUP_REPOSITORY',
      `the rollback of ${p} needs the backup repository ${restore.repository} to finish, and it cannot be opened (${(err as Error).message}); put it back there and run vmseal resume again`,
      { cause: err },
    );
  });
  const repoLock = await repo.lock('shared', 'restore --over (resume)', options.lockWaitMs ?? 0);
  try {
    return await withDisk(p, async () => {
      const journal = await Journal.open(p);
      if (!journal) return null; // finished by another process meanwhile
      try {
        journal.authenticate(journalKey(repo));
      } catch (err) {
        await journal.close();
        throw err;
      }
      const m = await readPoint(repo, restore.point);
      return runRollback(p, journal, repo, m, checkPoint(m), true, options.signal);
    });
  } finally {
    repoLock.release();
  }
}

function checkPoint(m: PointManifest): PointLayer {
  if (m.layers.length !== 1)
    throw new BackupError(
      'ERR_BACKUP_UNSUPPORTED',
      `point ${m.id} holds a snapshot chain of ${m.layers.length} layers; this vmseal restores single-layer points only`,
    );
  const layer = m.layers[0]!;
  if (m.plain || layer.descriptor === null) {
    throw new BackupError(
      'ERR_BACKUP_UNSUPPORTED',
      `point ${m.id} is of a plain disk, which a rollback (--over) does not handle; restore it to a new OUT instead`,
    );
  }
  return layer;
}

/** Hold the disk's lock and the names of its files and journal, exclusively, for `fn`. */
async function withDisk<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(path, 'backup restore --over');
  const names = new NameReservations();
  try {
    await names.reserve([...(await diskFiles(path, 'vmdk')), journalPathOf(path)], 'exclusive');
    return await fn();
  } finally {
    names.close();
    await lock.release();
  }
}

/** Check that the disk is the point's (refused otherwise: ERR_BACKUP_NOT_SAME_DISK) and make the journal's header. */
async function planRollback(
  repo: Repository,
  m: PointManifest,
  layer: PointLayer,
  path: string,
): Promise<{ header: JournalHeader; changed: Buffer | undefined }> {
  const disk = await openDisk(path, { readOnly: true, allowEncrypted: true, format: 'vmdk' });
  let current: Descriptor;
  try {
    const layers = chainLayers(disk);
    if (layers) {
      // The rollback writes the disk's own files: a child's would shadow its parents only in part.
      throw new BackupError(
        'ERR_BACKUP_UNSUPPORTED',
        `${path} is a snapshot layer over ${layers[layers.length - 2]!.path}; a rollback rewrites a single disk in place: commit the chain first (vmseal snapshot commit), or restore the point to a new OUT`,
      );
    }
    current = disk.descriptor!;
    if (current.has('encryption.job'))
      throw new BackupError(
        'ERR_INTERRUPTED_JOB',
        `${path} is marked as in an unfinished ${current.get('encryption.job')} job; finish it first (vmseal resume)`,
      );
    const saved = Descriptor.parse(layer.descriptor!);
    const grainSize = layer.subformat.endsWith('Sparse') ? (disk.grainSize ?? null) : null;
    const extentSize = layer.subformat.startsWith('twoGbMaxExtent') && current.extents.length > 1 ? current.extents[0]!.sectors * 512 : null;
    const differences = [
      disk.subformat !== layer.subformat ? `subformat ${disk.subformat}, the point's ${layer.subformat}` : '',
      disk.capacity !== layer.capacity ? `capacity ${disk.capacity} bytes, the point's ${layer.capacity}` : '',
      grainSize !== layer.grainSize ? `grain size ${grainSize ?? 'none'}, the point's ${layer.grainSize ?? 'none'}` : '',
      extentSize !== layer.extentSize ? `extent size ${extentSize ?? 'none'}, the point's ${layer.extentSize ?? 'none'}` : '',
      current.get('encryption.diskId') !== m.diskId ? `disk id ${current.get('encryption.diskId') ?? 'none (not encrypted)'}, the point's ${m.diskId}` : '',
    ].filter(Boolean);
    if (differences.length > 0) {
      throw new BackupError(
        'ERR_BACKUP_NOT_SAME_DISK',
        `${path} is not the disk point ${m.id} was taken of (${differences.join('; ')}); a rollback rewrites the changed chunks of that same disk only: restore the point to a new OUT instead`,
      );
    }
    const now = encryptionOf(disk)?.params ?? null; // from the descriptor already open
    if (!now) throw new BackupError('ERR_BACKUP_NOT_SAME_DISK', `${path} is not encrypted; restore the point to a new OUT instead`);
    const during = current.clone().set('encryption.job', JOB, { after: 'encryption.keySafe' });
    const final = finalDescriptor(current, saved, newRestoredFrom(repo.id, m.id));
    const toParams: JournalParams = { ...now, dataCheck: saved.get('encryption.dataCheck') };
    if (toParams.dataCheck === undefined) delete toParams.dataCheck;
    // Read before step 2 changes the disk's generation: the chunks changed since this point, if the bitmap says.
    const read = await readChangeBitmap(disk);
    const base = 'bitmap' in read ? read.bitmap.base : null;
    const changed = 'bitmap' in read && base?.repository === repo.id && base.point === m.id ? read.bitmap.bits : undefined;
    const header: JournalHeader = {
      version: 2,
      operation: JOB,
      disk: basename(path),
      capacity: disk.capacity,
      chunkSize: 4096, // no chunk copies: the copy area stays empty
      align: CHUNK_SIZE,
      from: now,
      to: toParams,
      started: new Date().toISOString(),
      descriptor: { during: during.toBuffer().toString('base64'), final: final.toBuffer().toString('base64') },
      restore: { repository: repo.path, point: m.id },
    };
    return { header, changed };
  } finally {
    await disk.close();
  }
}

/** The point's descriptor lines on the disk's extent lines, with the disk's KeySafe and a new lineage line. */
function finalDescriptor(current: Descriptor, saved: Descriptor, lineage: string): Descriptor {
  const d = current.clone();
  for (const [k] of current.entries()) if (!saved.has(k)) d.delete(k);
  for (const [k, v] of saved.entries()) d.set(k, v);
  const keySafe = current.get('encryption.keySafe');
  if (keySafe !== undefined) d.set('encryption.keySafe', keySafe);
  d.delete('encryption.job');
  d.set(RESTORED_FROM_KEY, lineage);
  return d;
}

/** Steps 2 to 4 of the job (also its resume). */
async function runRollback(
  path: string,
  journal: Journal,
  repo: Repository,
  m: PointManifest,
  layer: PointLayer,
  resumed: boolean,
  signal: AbortSignal | undefined,
  changed?: Buffer,
): Promise<RestoreOverResult> {
  const h = journal.header;
  try {
    // The descriptor the job ends with must be the point's disk: same disk id (so, with the authenticator, the same DEK).
    const final = Descriptor.parse(Buffer.from(h.descriptor.final, 'base64'));
    if (h.restore?.point !== m.id || h.capacity !== layer.capacity || final.get('encryption.diskId') !== m.diskId)
      throw new BackupError('ERR_BACKUP_MANIFEST', `the rollback journal ${journal.path} does not belong to point ${m.id} of this disk`);
    await removeStaleDescriptorTemps(path);
    const loc = await locateDescriptor(path);
    await writeDescriptor(loc, Buffer.from(h.descriptor.during, 'base64'));
    const disk = await openDisk(path, { allowEncrypted: true, format: 'vmdk' });
    let counts: { written: number; same: number; bytes: number };
    try {
      if (disk.capacity !== layer.capacity) throw new BackupError('ERR_BACKUP_NOT_SAME_DISK', `${path} has changed size since the rollback began`);
      counts = await rollChunks(repo, disk, layer, signal, changed);
      await disk.flush();
    } finally {
      await disk.close();
    }
    await writeDescriptor(loc, Buffer.from(h.descriptor.final, 'base64'));
    await journal.finish();
    return { point: m.id, path, chunksWritten: counts.written, chunksSame: counts.same, bytesWritten: counts.bytes, resumed };
  } finally {
    await journal.close();
  }
}

/**
 * Offsets of the chunks to compare: those the disk allocates and those the point lists, in order,
 * each once; with a change bitmap counting from the point, only those it marks.
 */
async function chunkOffsets(disk: VirtualDisk, layer: PointLayer, changed: Buffer | undefined): Promise<number[]> {
  if (changed) {
    const marked: number[] = [];
    for (let i = 0; i * CHUNK_SIZE < layer.capacity; i++) if (isChanged(changed, i)) marked.push(i * CHUNK_SIZE);
    return marked;
  }
  const set = new Set<number>(layer.chunks.map(([off]) => off));
  for await (const off of allocatedChunks(disk)) set.add(off);
  return [...set].sort((a, b) => a - b);
}

/** Chunks compared or rewritten at once: reads of the disk and the repository overlap, memory stays bounded. */
const PARALLEL = 4;

/** A chunk to look at: its offset, and the disk's hash of it when the addon hashed it (null: all zeros). */
type Candidate = [offset: number, hash: string | null | undefined];

async function rollChunks(
  repo: Repository,
  disk: VirtualDisk,
  layer: PointLayer,
  signal: AbortSignal | undefined,
  changed: Buffer | undefined,
): Promise<{ written: number; same: number; bytes: number }> {
  const target = new Map<number, string>(layer.chunks);
  const grain = layer.grainSize ?? CHUNK_SIZE;
  const offsets = await chunkOffsets(disk, layer, changed);
  let written = 0;
  let same = 0;
  let bytes = 0;
  // Without a bitmap every chunk is compared: a flat disk's are hashed by the addon on every core, and
  // a chunk whose hash differs from the point's is queued for the rewriting workers as soon as its run
  // is hashed, so that the rewrites overlap the hashing of the rest (most chunks compare equal and
  // never reach the queue). Chunks the addon did not hash (sparse disks, the bitmap's chunks) are
  // queued unhashed and compared by the workers. Every write comes after the journal's "during"
  // descriptor (runRollback) and targets a chunk of the point checked by hash, whatever the order:
  // a crash at any moment leaves a job that resume repeats from the start.
  const queue = new WorkQueue<Candidate>();
  const found = (off: number, hash: string | null | undefined): void => {
    if (hash !== undefined && (hash ?? undefined) === target.get(off)) same++;
    else queue.push([off, hash]);
  };
  const findCandidates = async (stopped: () => boolean): Promise<void> => {
    try {
      const hashed = !changed && (await hashFlatChunks(disk, offsets, found, { signal, stopped }));
      if (!hashed) for (const off of offsets) queue.push([off, undefined]);
    } finally {
      queue.end();
    }
  };
  const rewrite = async (stopped: () => boolean): Promise<void> => {
    const now = Buffer.allocUnsafe(CHUNK_SIZE);
    const want = Buffer.allocUnsafe(CHUNK_SIZE);
    for (let c = await queue.take(); c !== undefined && !stopped(); c = await queue.take()) {
      if (signal?.aborted) throw abortError(signal, `the rollback of ${disk.path} (run vmseal resume ${disk.path} to finish it)`);
      const [off, known] = c;
      const len = Math.min(CHUNK_SIZE, layer.capacity - off);
      const cur = now.subarray(0, len);
      const hash = target.get(off);
      const data = want.subarray(0, len);
      // The point's chunk is checked against its hash (readChunk) before any of it is written.
      const fetch = (): Promise<void> => (hash === undefined ? Promise.resolve(void data.fill(0)) : repo.readChunk(hash, data));
      let differs: boolean;
      if (known !== undefined) {
        differs = true; // found() queues only the hashed chunks that differ
        await fetch();
      } else if (changed) {
        // A chunk the bitmap marks most likely differs: the point's chunk is fetched first and compared
        // byte for byte, one SHA-256 per chunk instead of two (the disk's and the point's).
        await fetch();
        await disk.readInto(off, cur);
        differs = !cur.equals(data);
      } else {
        // Most chunks are unchanged: the disk's is hashed, and the point's fetched only if it differs.
        await disk.readInto(off, cur);
        differs = hash === undefined ? !cur.equals(ZERO.subarray(0, len)) : sha256Hex(cur) !== hash;
        if (differs) await fetch();
      }
      if (!differs) {
        same++;
        continue;
      }
      // A sparse disk gets the point's allocation: zero grains become holes, others are written.
      const put = await putChunkKeepingHoles(disk, off, data, grain, layer.grainSize !== null ? 'deallocate' : 'write');
      bytes += put; // (not `bytes += await`: that would add to the value read before the other workers' writes)
      written++;
    }
  };
  // One worker finds the candidates, the others rewrite them; chunks are disjoint, so their order does
  // not matter. The first failure stops every worker (the finder's end() wakes the idle rewriters);
  // all have stopped before the disk is closed.
  let finderStarted = false;
  await runWorkers(1 + PARALLEL, (stopped) => {
    if (finderStarted) return rewrite(stopped);
    finderStarted = true;
    return findCandidates(stopped);
  });
  return { written, same, bytes };
}
