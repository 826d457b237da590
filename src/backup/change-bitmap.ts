/**
 * The changed-chunk bitmap of a disk, `<disk>.vmseal-ctk`: which 1 MiB chunks (CHUNK_SIZE, the
 * backup's chunks) of the virtual disk changed since a backup point (its BASE), so that the next
 * `backup create` reads only those. A writer keeps it (ChangeTracker, attached by trackChanges:
 * every writable export of `vmseal serve`, and library writers that ask); `backup create` reads it
 * (readChangeBitmap) and, once its point is committed, starts a new one on that point (writeBaseline).
 *
 * File format (version 1, little-endian, docs/backup.md gives the same table):
 *
 *     0   8  magic "VMSLCTK\n"
 *     8   4  version = 1
 *    12   4  state: 1 clean (bits valid), 2 dirty (a writer has the disk open: bits not valid)
 *    16   4  chunk size = 1048576
 *    20   4  zero
 *    24   8  capacity of the disk in bytes
 *    32   8  chunk count = ceil(capacity / chunk size)
 *    40   4  the disk's CID (descriptor `CID`)
 *    44   4  zero
 *    48  16  encryption.diskId (zeros for a plain disk)
 *    64  32  SHA-256 of the descriptor text (binds the authenticator, data check, KeySafe, every line)
 *            and of the disk's files as stat(2) sees them (see fileStamps)
 *    96  16  base repository id (zeros: no base)
 *   112  32  base point id, ASCII, NUL-padded (zeros: no base)
 *   144  32  SHA-256 of bytes [0, 144) and of the bits
 *   176      the bits, ceil(count / 8) bytes: chunk i is bit (i & 7) of byte (i >> 3); 1 = changed
 *
 * A dirty file is the header alone (its bits would mean nothing). Every write of the file is atomic
 * (temp file, fsync, rename, fsync of the folder), so the crash story is: the writer makes the file
 * dirty, durably, before the first write to the disk after opening it; it makes it clean with the
 * bits only at an orderly close, after the disk is flushed. A file found dirty (the writer died) or
 * of another disk generation (anything changed the descriptor since: an in-place job, a rekey, a
 * snapshot commit or rollback, a qemu write, which draws a new CID) is not used: every chunk then
 * counts as changed. The file is at most 176 bytes + capacity / 8 MiB (2 MiB for 16 TiB).
 *
 * A writer that does not draw a new CID (`dd` into a flat extent, a tool that edits the extent
 * files and leaves the descriptor alone) would otherwise go unseen and the next backup would miss
 * its changes. So the digest also covers each file of the disk (the descriptor's file and every
 * extent file) as stat(2) sees it: inode, size, modification and change times in nanoseconds. Any
 * write to any of them since the bitmap was saved changes the digest, and the next backup then reads
 * everything. Nothing can set a file's change time back.
 */
import { createHash } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { writeFileAtomic } from '../util/atomic-file.js';
import { runWorkers } from '../util/run-workers.js';
import { readFully } from '../util/file-io.js';
import type { Descriptor } from '../vmdk/index.js';
import type { ChangeWatcher } from '../vmdk/disk.js';
import { CHANGE_BITMAP_SUFFIX } from '../pipeline/paths.js';
import { CHUNK_SIZE } from './repository.js';

export { CHANGE_BITMAP_SUFFIX };
const MAGIC = Buffer.from('VMSLCTK\n', 'latin1');
const VERSION = 1;
const CLEAN = 1;
const DIRTY = 2;
const HEADER = 176;
const SUMMED = 144;

/** Which state of which disk a bitmap describes: the descriptor's CID, disk id and digest. */
export interface DiskGeneration {
  cid: number;
  /** 16 bytes, zeros for a plain disk. */
  diskId: Buffer;
  /** SHA-256 of the descriptor text. */
  digest: Buffer;
}

/** The point a bitmap counts changes from. */
export interface ChangeBase {
  repository: string;
  point: string;
}

/** What a disk has that a bitmap needs. */
export interface TrackedDisk {
  readonly path: string;
  readonly capacity: number;
  readonly format: 'vmdk' | 'raw';
  readonly descriptor: Descriptor | undefined;
}

/** A clean bitmap read back. */
export interface ChangeBitmap {
  base: ChangeBase | null;
  generation: DiskGeneration;
  capacity: number;
  bits: Buffer;
}

export function changeBitmapPath(diskPath: string): string {
  return `${diskPath}${CHANGE_BITMAP_SUFFIX}`;
}

const chunkCount = (capacity: number): number => Math.ceil(capacity / CHUNK_SIZE);

/**
 * Whether a disk is tracked at all: not a raw image (no descriptor, so no CID to tell another
 * writer's changes). The top of a snapshot chain is tracked too: writes land in it only, so its bits
 * are the changes of the chain's merged view — the view a chain point stores (a backup uses them
 * only against a point of the same chain: create.ts changePlan).
 */
export function isTracked(disk: TrackedDisk): boolean {
  const d = disk.descriptor;
  if (disk.format !== 'vmdk' || d === undefined) return false;
  const cid = Number.parseInt(d.get('CID') ?? '', 16);
  return Number.isSafeInteger(cid) && cid >= 0 && cid <= 0xffffffff;
}

/** stat(2) calls in flight at once for fileStamps: a 16 TiB twoGbMaxExtentSparse disk has 8,193 files. */
const STAT_PARALLEL = 16;

/**
 * One line per file of the disk (the descriptor's file, then each extent file once, in descriptor
 * order): `inode size mtime-ns ctime-ns`. A file that cannot be stat'ed gives its error code, so
 * that a missing extent is a different generation rather than an exception. The stats run
 * STAT_PARALLEL at a time (each is a hop through libuv's pool: one after the other, thousands of
 * them cost each backup and each clean close seconds); the lines keep the files' order.
 */
async function fileStamps(disk: TrackedDisk): Promise<string> {
  const folder = dirname(disk.path);
  const files = new Set([disk.path]);
  for (const e of disk.descriptor?.extents ?? []) if (e.file !== undefined) files.add(resolve(folder, e.file));
  const list = [...files];
  const lines: string[] = new Array<string>(list.length);
  let next = 0;
  await runWorkers(Math.min(STAT_PARALLEL, list.length), async () => {
    while (next < list.length) {
      const i = next++;
      try {
        const st = await stat(list[i]!, { bigint: true });
        lines[i] = `${st.ino} ${st.size} ${st.mtimeNs} ${st.ctimeNs}`;
      } catch (err) {
        lines[i] = `! ${(err as NodeJS.ErrnoException).code ?? 'error'}`;
      }
    }
  });
  return lines.join('\n');
}

/** The disk's generation now, or null for a disk that is not tracked (isTracked). */
export async function generationOf(disk: TrackedDisk): Promise<DiskGeneration | null> {
  if (!isTracked(disk)) return null;
  const d = disk.descriptor!;
  const cid = Number.parseInt(d.get('CID')!, 16);
  const id = d.get('encryption.diskId');
  const diskId = id !== undefined && /^[0-9a-f]{32}$/i.test(id) ? Buffer.from(id, 'hex') : Buffer.alloc(16);
  const digest = createHash('sha256')
    .update(d.toString())
    .update('\0')
    .update(await fileStamps(disk))
    .digest();
  return { cid, diskId, digest };
}

export function sameGeneration(a: DiskGeneration, b: DiskGeneration): boolean {
  return a.cid === b.cid && a.diskId.equals(b.diskId) && a.digest.equals(b.digest);
}

function encode(state: number, capacity: number, g: DiskGeneration, base: ChangeBase | null, bits: Buffer | null): Buffer {
  const out = Buffer.alloc(HEADER + (bits?.length ?? 0));
  MAGIC.copy(out, 0);
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(state, 12);
  out.writeUInt32LE(CHUNK_SIZE, 16);
  out.writeBigUInt64LE(BigInt(capacity), 24);
  out.writeBigUInt64LE(BigInt(chunkCount(capacity)), 32);
  out.writeUInt32LE(g.cid, 40);
  g.diskId.copy(out, 48);
  g.digest.copy(out, 64);
  if (base) {
    Buffer.from(base.repository, 'hex').copy(out, 96);
    out.write(base.point, 112, 32, 'latin1');
  }
  if (bits) bits.copy(out, HEADER);
  createHash('sha256').update(out.subarray(0, SUMMED)).update(out.subarray(HEADER)).digest().copy(out, SUMMED);
  return out;
}

/**
 * Read the bitmap of `disk` if it is clean and tracks the disk's generation now; otherwise the reason
 * it is not used (absent, dirty, damaged, another generation). Reads at most the size the disk's
 * capacity implies.
 */
export async function readChangeBitmap(disk: TrackedDisk, known?: DiskGeneration | null): Promise<{ bitmap: ChangeBitmap } | { why: string }> {
  // `known`: the disk's generation now, when the caller has it already (its stats need not be taken twice).
  const generation = known === undefined ? await generationOf(disk) : known;
  if (!generation) return { why: 'the disk is not tracked (a raw image)' };
  const file = changeBitmapPath(disk.path);
  const size = HEADER + Math.ceil(chunkCount(disk.capacity) / 8);
  let buf: Buffer;
  try {
    const st = await stat(file);
    if (st.size === HEADER) buf = Buffer.alloc(HEADER);
    else if (st.size === size) buf = Buffer.alloc(size);
    else return { why: `${file} has ${st.size} bytes, not ${size}: damaged, or of another disk` };
    const fh = await open(file, 'r');
    try {
      if ((await readFully(fh, buf, 0)) !== buf.length) return { why: `${file} changed while it was read` };
    } finally {
      await fh.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { why: `no ${file}` };
    return { why: `${file} could not be read: ${(err as Error).message}` };
  }
  if (!buf.subarray(0, 8).equals(MAGIC)) return { why: `${file} is not a change bitmap` };
  if (buf.readUInt32LE(8) !== VERSION) return { why: `${file} has version ${buf.readUInt32LE(8)}, not ${VERSION}` };
  const sum = createHash('sha256').update(buf.subarray(0, SUMMED)).update(buf.subarray(HEADER)).digest();
  if (!sum.equals(buf.subarray(SUMMED, HEADER))) return { why: `${file} is damaged (checksum)` };
  const state = buf.readUInt32LE(12);
  if (state === DIRTY) return { why: `${file} is dirty: the disk was not closed cleanly by the host that served it` };
  if (state !== CLEAN || buf.length !== size) return { why: `${file} has an unknown state ${state}` };
  if (
    buf.readUInt32LE(16) !== CHUNK_SIZE ||
    buf.readBigUInt64LE(24) !== BigInt(disk.capacity) ||
    buf.readBigUInt64LE(32) !== BigInt(chunkCount(disk.capacity))
  ) {
    return { why: `${file} was made for another chunk size or capacity` };
  }
  const stored: DiskGeneration = { cid: buf.readUInt32LE(40), diskId: Buffer.from(buf.subarray(48, 64)), digest: Buffer.from(buf.subarray(64, 96)) };
  if (!sameGeneration(stored, generation))
    return { why: `${file} tracks another generation of the disk (its descriptor or files changed since: a job, rekey or another writer)` };
  const repo = buf.subarray(96, 112);
  const point = buf.subarray(112, 144).toString('latin1').replace(/\0+$/, '');
  const base = repo.equals(Buffer.alloc(16)) ? null : { repository: repo.toString('hex'), point };
  return { bitmap: { base, generation, capacity: disk.capacity, bits: Buffer.from(buf.subarray(HEADER)) } };
}

/** Whether chunk `index` is marked changed. */
export function isChanged(bits: Buffer, index: number): boolean {
  return ((bits[index >> 3]! >> (index & 7)) & 1) === 1;
}

/** A bitmap of `capacity` bytes' chunks with none marked. */
export function emptyChangeBits(capacity: number): Buffer {
  return Buffer.alloc(Math.ceil(chunkCount(capacity) / 8));
}

/** Mark the chunks of [offset, offset+length) changed in `bits` (of a disk of `capacity` bytes). */
export function markChanged(bits: Buffer, capacity: number, offset: number, length: number): void {
  if (length <= 0) return;
  const last = Math.floor((Math.min(offset + length, capacity) - 1) / CHUNK_SIZE);
  for (let i = Math.floor(offset / CHUNK_SIZE); i <= last; i++) bits[i >> 3]! |= 1 << (i & 7);
}

/**
 * Write a clean bitmap of `disk` as it is now, which nobody writes meanwhile: `bits` are the chunks
 * changed since `base`. Nothing for an untracked disk.
 */
export async function writeChangeBitmap(disk: TrackedDisk, base: ChangeBase | null, bits: Buffer, known?: DiskGeneration | null): Promise<void> {
  const g = known === undefined ? await generationOf(disk) : known;
  if (!g) return;
  await writeFileAtomic(changeBitmapPath(disk.path), encode(CLEAN, disk.capacity, g, base, bits));
}

/**
 * Start a new, empty, clean bitmap on the point `base` just committed from `disk`, which nobody
 * writes meanwhile (the backup holds its lock). Nothing for an untracked disk. `known`: the disk's
 * generation taken under the same lock (reading the disk changes none of its files' times).
 */
export function writeBaseline(disk: TrackedDisk, base: ChangeBase, known?: DiskGeneration | null): Promise<void> {
  return writeChangeBitmap(disk, base, emptyChangeBits(disk.capacity), known);
}

/**
 * What a writer of the disk keeps (trackChanges attaches one to the disk: src/backup/track-changes.ts,
 * for a library writer and each writable export of `vmseal serve` alike): bits set in memory; the
 * file made dirty once, before the first change after opening; made clean with the bits once the
 * disk is closed, still under its writer's lock. The disk layer calls it (ChangeWatcher of
 * src/vmdk/disk.ts) before every change of content or descriptor, whichever object the write came
 * through (an EncryptedDisk, a ChainDisk, the layer itself), so no write escapes the bits.
 */
export class ChangeTracker implements ChangeWatcher {
  readonly #disk: TrackedDisk;
  #tracked: boolean;
  #bits: Buffer | undefined;
  #base: ChangeBase | null = null;
  #started: Promise<void> | undefined;
  #dirty = false;

  constructor(disk: TrackedDisk) {
    this.#disk = disk;
    this.#tracked = isTracked(disk);
  }

  /**
   * Mark [offset, offset+length) changed (length 0: a descriptor change, nothing to mark); resolves
   * once the file says dirty (durably), so call it before the change it announces. Only the first
   * call after opening writes the file.
   */
  async beforeChange(offset: number, length: number): Promise<void> {
    if (!this.#tracked) return;
    if (!this.#dirty) {
      // A file that cannot be written (a folder the writer may not create files in) does not fail
      // the write: the disk goes untracked. A clean bitmap left from before stays harmless, since
      // the write draws a new CID (src/vmdk/disk.ts) and changes the files' times, so its
      // generation no longer matches.
      this.#started ??= this.#start().catch(() => {
        this.#tracked = false;
      });
      await this.#started;
      if (!this.#tracked) return;
    }
    markChanged(this.#bits!, this.#disk.capacity, offset, length);
  }

  /** Keep the bits and base of a valid bitmap (changes since its base go on adding up), then mark the file dirty. */
  async #start(): Promise<void> {
    const g = (await generationOf(this.#disk))!;
    const read = await readChangeBitmap(this.#disk, g);
    if ('bitmap' in read) {
      this.#bits = read.bitmap.bits;
      this.#base = read.bitmap.base;
    } else {
      this.#bits = emptyChangeBits(this.#disk.capacity);
      this.#base = null;
    }
    await writeFileAtomic(changeBitmapPath(this.#disk.path), encode(DIRTY, this.#disk.capacity, g, this.#base, null));
    this.#dirty = true;
  }

  /**
   * The disk was flushed and closed in order: the bits are written clean with the disk's generation
   * after its writes (its new CID, its files' final times). Nothing when the disk was not changed.
   * A failure leaves the file dirty, which only means that the next backup reads everything.
   */
  async afterClose(): Promise<void> {
    if (!this.#dirty) return;
    this.#dirty = false;
    try {
      const after = await generationOf(this.#disk);
      if (after) await writeFileAtomic(changeBitmapPath(this.#disk.path), encode(CLEAN, this.#disk.capacity, after, this.#base, this.#bits!));
    } catch {
      // Left dirty: see above.
    }
  }
}
