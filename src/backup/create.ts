/**
 * `backup create`: store a point of a disk's virtual ciphertext view — what `qemu-img convert -O raw`
 * of the encrypted disk gives — without any key. The view is cut into CHUNK_SIZE chunks at multiples
 * of CHUNK_SIZE (so every chunk is whole data units, and the same data at the same offset is the
 * same chunk in every point and subformat); only chunks that overlap allocated ranges are read, an
 * all-zero chunk is a hole (not stored), and a chunk already in the repository is not written again.
 * The chunks are written first, the manifest last: a killed backup leaves chunks that no manifest
 * names yet (the next backup reuses them; prune removes them if none does).
 */
import { basename } from 'node:path';
import { assertNoJournal } from '../disk/index.js';
import { encryptionOf } from '../disk/for-pipeline.js';
import { openDisk, type VirtualDisk } from '../vmdk/index.js';
import { acquireLock } from '../pipeline/lock.js';
import { expected } from '../errors.js';
import { BackupError } from './errors.js';
import {
  BACKUP_SUBFORMATS,
  HISTORY_RE,
  MANIFEST_FORMAT,
  MANIFEST_VERSION,
  POINT_NAME_RE,
  serializeManifest,
  type BackupSubformat,
  type ChunkEntry,
  type PointManifest,
} from './manifest.js';
import { CHUNK_SIZE, POINT_ID_RE, newPointId, openRepository, type Repository } from './repository.js';
import { storeChunks } from './store-chunks.js';
import { readPoint } from './points.js';
import { addToPointIndex, entryOf, pointEntries } from './point-index.js';
import { generationOf, isChanged, readChangeBitmap, writeBaseline, type DiskGeneration } from './change-bitmap.js';
import { parentInLineage } from './lineage.js';
import { chainLayers, chainLineage, chainRecord, flattenedDescriptor, sameChain, type PointChain } from './chain-point.js';

export interface CreateBackupOptions {
  /** A name for the point, to restore it by (letters, digits, `.`, `_`, `-`; not `latest`). */
  name?: string;
  /** The history the point belongs to (default: the disk's ddb.uuid, else its encryption.diskId, else its file name). */
  history?: string;
  /** Back up a plain (unencrypted) disk: its chunks are then plaintext (default: `false`, refused with ERR_BACKUP_PLAIN). */
  allowPlain?: boolean;
  /** What the disk file is (default: detected, as by openDisk). */
  format?: 'vmdk' | 'raw';
  /** Wait this long for a repository lock held exclusively by a prune (default: `0`). */
  lockWaitMs?: number;
  signal?: AbortSignal;
}

export interface CreateBackupResult {
  /** The new point's id. */
  point: string;
  name: string | null;
  history: string;
  parent: string | null;
  plain: boolean;
  /** Non-zero chunks the point lists. */
  chunks: number;
  /** Chunks this backup wrote (the others were in the repository already). */
  newChunks: number;
  newBytes: number;
  /** Bytes of the disk read (the allocated chunks, or with a change bitmap only the changed ones). */
  bytesRead: number;
  /** Chunks of the disk read. */
  chunksRead: number;
  /**
   * Whether the disk's change bitmap (`<disk>.vmseal-ctk`, kept by `vmseal serve`) was used, so
   * that only changed chunks were read; if not, why (absent, dirty, another generation or base).
   */
  changeBitmap: { used: true; base: string } | { used: false; why: string };
}

function arg(what: string, name: string, value: unknown): BackupError {
  return new BackupError('ERR_INVALID_ARGUMENT', expected(what, name, value));
}

export function checkPointName(name: unknown, argument = 'options.name'): string {
  if (typeof name !== 'string' || !POINT_NAME_RE.test(name) || name === 'latest' || POINT_ID_RE.test(name)) {
    throw arg("a point name (1 to 64 letters, digits, '.', '_', '-'; not 'latest' or a point id)", argument, name);
  }
  return name;
}

/** Chunk offsets overlapping the disk's allocated ranges, in order, each once. */
export async function* allocatedChunks(disk: VirtualDisk): AsyncGenerator<number> {
  let next = 0; // first chunk offset not yet yielded
  for await (const r of disk.allocatedRanges()) {
    const first = Math.max(next, Math.floor(r.offset / CHUNK_SIZE) * CHUNK_SIZE);
    for (let off = first; off < r.offset + r.length; off += CHUNK_SIZE) yield off;
    next = Math.max(next, Math.ceil((r.offset + r.length) / CHUNK_SIZE) * CHUNK_SIZE);
  }
}

/**
 * Up to this many chunks to read, they are hashed and stored on the JS thread: a worker thread takes
 * ~0.1 s of CPU to start (Node's bootstrap), about what hashing and storing ~100 chunks here costs.
 */
const FEW_CHUNKS = 128;

/** How many chunks a change bitmap marks. */
function countChanged(bits: Buffer): number {
  let n = 0;
  for (let b of bits) {
    for (; b !== 0; b &= b - 1) n++;
  }
  return n;
}

/** Offsets of the chunks a change bitmap marks, in order. */
function* changedChunks(bits: Buffer, capacity: number): Generator<number> {
  for (let i = 0; i * CHUNK_SIZE < capacity; i++) if (isChanged(bits, i)) yield i * CHUNK_SIZE;
}

/**
 * The disk's valid change bitmap and the point it counts from: used only when it is clean, tracks the
 * disk's generation now, and its base is a readable point of this repository with the same disk
 * (capacity, disk id, plain or not, one layer) — for a chain's top, a point of the same chain
 * (sameChain). Otherwise why not.
 */
async function changePlan(
  repo: Repository,
  disk: VirtualDisk,
  diskId: string | null,
  plain: boolean,
  generation: DiskGeneration | null,
  chain: PointChain | undefined,
): Promise<{ bits: Buffer; base: PointManifest } | { why: string }> {
  const read = await readChangeBitmap(disk, generation);
  if (!('bitmap' in read)) return read;
  const b = read.bitmap.base;
  if (b === null) return { why: 'the change bitmap has no base point yet (the next backup starts one)' };
  if (b.repository !== repo.id) return { why: 'the change bitmap counts from a point of another repository' };
  let base: PointManifest;
  try {
    base = await readPoint(repo, b.point);
  } catch (err) {
    return { why: `the change bitmap's base point ${b.point} cannot be read: ${(err as Error).message}` };
  }
  if (base.layers.length !== 1 || !sameChain(base.chain, chain) || base.capacity !== disk.capacity || base.diskId !== diskId || base.plain !== plain) {
    return { why: `the change bitmap's base point ${b.point} is not of this disk as it is` };
  }
  return { bits: read.bitmap.bits, base };
}

/** The default history of `base` (a single disk, or a chain's base: a chain's points continue its base's history). */
function defaultHistory(base: VirtualDisk, diskId: string | null): string {
  const uuid = base.descriptor?.get('ddb.uuid');
  if (uuid !== undefined && HISTORY_RE.test(uuid)) return uuid;
  if (diskId !== null) return diskId;
  const name = basename(base.path);
  return HISTORY_RE.test(name) ? name : 'disk';
}

/** Back up the disk at `diskPath` into the repository at `repoPath` as a new point. */
export async function createBackup(diskPath: string, repoPath: string, options: CreateBackupOptions = {}): Promise<CreateBackupResult> {
  if (typeof diskPath !== 'string' || diskPath === '' || diskPath.includes('\0')) throw arg('a file path', 'disk', diskPath);
  if (options === null || typeof options !== 'object') throw arg('an object', 'options', options);
  const name = options.name === undefined ? null : checkPointName(options.name);
  if (options.history !== undefined && (typeof options.history !== 'string' || !HISTORY_RE.test(options.history))) {
    throw arg('1 to 256 printable ASCII characters', 'options.history', options.history);
  }
  const allowPlain = options.allowPlain ?? false;
  if (typeof allowPlain !== 'boolean') throw arg('a boolean', 'options.allowPlain', allowPlain);
  const waitMs = options.lockWaitMs ?? 0;
  if (!Number.isSafeInteger(waitMs) || waitMs < 0) throw arg('a non-negative integer', 'options.lockWaitMs', waitMs);
  const signal = options.signal;

  const repo = await openRepository(repoPath);
  const repoLock = await repo.lock('shared', 'create', waitMs);
  try {
    assertNoJournal(diskPath);
    const diskLock = await acquireLock(diskPath, 'backup', 'shared');
    try {
      const disk = await openDisk(diskPath, { readOnly: true, allowEncrypted: true, ...(options.format ? { format: options.format } : {}) });
      try {
        return await backUp(repo, disk, { name, history: options.history, allowPlain, signal });
      } finally {
        await disk.close();
      }
    } finally {
      await diskLock.release();
    }
  } finally {
    repoLock.release();
  }
}

async function backUp(
  repo: Repository,
  disk: VirtualDisk,
  o: { name: string | null; history: string | undefined; allowPlain: boolean; signal: AbortSignal | undefined },
): Promise<CreateBackupResult> {
  const d = disk.descriptor;
  const encrypted = d?.isEncrypted() ?? false;
  if (!encrypted && !o.allowPlain) {
    throw new BackupError(
      'ERR_BACKUP_PLAIN',
      `${disk.path} is not encrypted: its backup would hold its data in plaintext; encrypt it first (vmseal encrypt), or use a general backup tool, or pass allowPlain (--allow-plain) to store a plain point`,
    );
  }
  if (d?.has('encryption.job')) {
    throw new BackupError(
      'ERR_INTERRUPTED_JOB',
      `${disk.path} is in the middle of an in-place job (${d.get('encryption.job')}); finish it first (vmseal resume)`,
    );
  }
  // A snapshot chain's layer: its merged view is stored shaped like the chain's base (chain-point.ts).
  const layers = chainLayers(disk);
  const shape = layers ? layers[0]! : disk;
  const chain: PointChain | undefined = layers ? chainRecord(layers) : undefined;
  const subformat = shape.format === 'raw' ? 'raw' : shape.subformat;
  if (!(BACKUP_SUBFORMATS as readonly string[]).includes(subformat)) {
    throw new BackupError(
      'ERR_BACKUP_UNSUPPORTED',
      `${shape.path} is a ${subformat} disk, which backups do not store; convert it to monolithicSparse or monolithicFlat first`,
    );
  }
  if (disk.capacity === 0 || disk.capacity % 512 !== 0) {
    // A manifest records whole sectors (what restore can recreate): a raw image of another size is refused.
    throw new BackupError('ERR_BACKUP_UNSUPPORTED', `${disk.path} has ${disk.capacity} bytes, not a positive whole number of 512-byte sectors`);
  }
  // The encryption lines are checked (a damaged or foreign set is refused) without any key, from the
  // descriptor already open (not by opening the disk's files a second time).
  const params = encrypted ? (encryptionOf(disk)?.params ?? null) : null;
  if (params && disk.capacity % params.unitSize !== 0) {
    throw new BackupError('ERR_BACKUP_UNSUPPORTED', `the capacity of ${disk.path} is not a multiple of its ${params.unitSize}-byte data unit`);
  }
  const history = o.history ?? defaultHistory(shape, params?.diskId ?? null);
  // The point index (point-index.ts) gives every point's history and lineage line without parsing
  // their manifests; the only manifest read is the change bitmap's base (changePlan). The two are
  // read at once: each is a chain of calls on libuv's pool (open, stat, read, close…), and neither
  // needs the other. Both settle before anything goes on (the disk is closed after a failure).
  // The disk's generation (its descriptor and files' stat times) is taken once, under its lock: it
  // checks the bitmap now and stamps the new baseline at the end (reading changes no file's times).
  const planned = (async () => {
    const generation = await generationOf(disk);
    return { generation, plan: await changePlan(repo, disk, params?.diskId ?? null, !encrypted, generation, chain) };
  })();
  const [knownR, plannedR] = await Promise.allSettled([pointEntries(repo, { skipDamaged: true }), planned]);
  if (knownR.status === 'rejected') throw knownR.reason;
  if (plannedR.status === 'rejected') throw plannedR.reason;
  const known = knownR.value;
  const { generation, plan } = plannedR.value;
  // After a restore, the restored disk's points continue from the point it was restored from (lineage.ts).
  const parent = parentInLineage(
    known.filter((p) => p.history === history),
    chainLineage(layers ?? [disk]),
    repo.id,
  );

  const entries: ChunkEntry[] = [];
  let newChunks = 0;
  let newBytes = 0;
  let bytesRead = 0;
  let chunksRead = 0;
  let offsets: AsyncIterator<number> | Iterator<number>;
  let toRead = Infinity;
  if ('bits' in plan) {
    // Unchanged chunks are the base point's (its hash, or a hole); only the changed ones are read.
    for (const e of plan.base.layers[0]!.chunks) if (!isChanged(plan.bits, e[0] / CHUNK_SIZE)) entries.push([e[0], e[1]]);
    offsets = changedChunks(plan.bits, disk.capacity);
    toRead = countChanged(plan.bits);
  } else {
    offsets = allocatedChunks(disk);
  }
  /** Fan-out folders that got a new chunk: synced once, before the manifest names their chunks. */
  const written = new Set<string>();
  const tally = {
    read: (length: number): void => {
      bytesRead += length;
      chunksRead++;
    },
    stored: (off: number, hash: string, wrote: boolean, length: number): void => {
      if (wrote) {
        newChunks++;
        newBytes += length;
        written.add(hash.slice(0, 2));
      }
      entries.push([off, hash]);
    },
  };
  // A few chunks (a change bitmap's) are stored on this thread when they do not go natively: starting
  // the chunk writer threads costs more than they save.
  await storeChunks(repo, disk, offsets, tally, { signal: o.signal, fewChunks: toRead <= FEW_CHUNKS });
  entries.sort((a, b) => a[0] - b[0]);
  await repo.syncChunkFolders(written);

  const now = new Date();
  const id = newPointId(now);
  const sd = shape.descriptor;
  const grainSize = subformat.endsWith('Sparse') ? (shape.grainSize ?? null) : null;
  const extentSize = subformat.startsWith('twoGbMaxExtent') && sd && sd.extents.length > 1 ? sd.extents[0]!.sectors * 512 : null;
  const descriptor = layers ? flattenedDescriptor(layers).toString() : d ? d.toString() : null;
  const manifest: PointManifest = {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    repository: repo.id,
    id,
    name: o.name,
    history,
    parent,
    time: now.toISOString(),
    plain: !encrypted,
    source: disk.path,
    capacity: disk.capacity,
    chunkSize: CHUNK_SIZE,
    unitSize: params?.unitSize ?? null,
    diskId: params?.diskId ?? null,
    layers: [{ subformat: subformat as BackupSubformat, descriptor, capacity: disk.capacity, grainSize, extentSize, chunks: entries }],
    ...(chain ? { chain } : {}),
    stats: { chunks: entries.length, newChunks, newBytes },
  };
  await repo.writePointText(id, serializeManifest(manifest));
  // The index is a cache (point-index.ts): a failure, or a crash before this, is repaired by the next
  // reader. Added under the index lock to what it holds now, not to `known`: concurrent backups' points stay.
  await addToPointIndex(repo, entryOf(manifest));
  // The point is committed and nobody wrote the disk meanwhile (its lock is held): changes now count
  // from this point. A failure leaves the old bitmap, still right about its own base.
  await writeBaseline(disk, { repository: repo.id, point: id }, generation).catch(() => undefined);
  const changeBitmap = 'bits' in plan ? { used: true as const, base: plan.base.id } : { used: false as const, why: plan.why };
  return { point: id, name: o.name, history, parent, plain: !encrypted, chunks: entries.length, newChunks, newBytes, bytesRead, chunksRead, changeBitmap };
}
