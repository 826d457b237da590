import { VmdkFormatError } from './errors.js';
import { inflateGrain } from './grain-zlib.js';
import { type ByteRange, type Extent, readOnlyError } from './extent.js';
import { type HostFile, Mutex } from './file.js';
import { TableRuns } from './table-runs.js';
import {
  FLAG_COMPRESSED,
  FLAG_RGD,
  FLAG_ZEROED_GTE,
  MAX_SPARSE_FILE_SECTORS,
  SECTOR,
  type SparseHeader,
  gdEntryCount,
  gtSectors,
  parseSparseHeader,
} from './sparse-header.js';

/** Grain tables kept in memory at most (bytes); more are re-read from the file when needed. */
export const GT_CACHE_BYTES = 16 << 20;
/** The bound in force for extents opened from now on (tests lower it to exercise eviction). */
export const gtCacheSettings = { bytes: GT_CACHE_BYTES };
/** Largest compressed grain accepted (zlib's worst case for a 1 MiB grain is far below this). */
const MAX_COMPRESSED_SLACK = 4096;
/** Data ranges of the table area learnt at open at most; beyond them every table is read. */
export const DATA_RANGES_MAX = 1 << 16;
/** The bound in force for extents opened from now on (tests lower it). */
export const dataRangeSettings = { max: DATA_RANGES_MAX };
/**
 * Grain-table entries of new grains held in memory until the next flush, at most: beyond this a
 * write commits them itself (data synced, then entries written), so that a client that never
 * flushes cannot pin every grain table of a big disk (64 Ki entries: 4 GiB of 64 KiB grains).
 */
const MAX_UNWRITTEN_ENTRIES = 1 << 16;

export interface SparseOpenOptions {
  writable: boolean;
  /** Why writes are refused when `writable` is false (for the error message). */
  whyReadOnly: string;
}

interface Interval {
  start: number;
  end: number;
  what: string;
}

/** What open() learnt about the metadata, for the checks made when tables are first read. */
interface OpenedLayout {
  /** Header, embedded descriptor, GD and RGD, sorted. */
  fixed: Interval[];
  /** Every grain table and redundant grain table listed at open. */
  tables: TableRuns;
  /** Per GD entry, 1 when the table may hold data (see SparseExtent.#mayHold). */
  mayHold: Uint8Array;
}

/** A Uint32Array that grows by doubling (grain start sectors collected while validating). */
class U32List {
  data = new Uint32Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.data.length) {
      const next = new Uint32Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length++] = v;
  }
  sorted(): Uint32Array {
    return this.data.subarray(0, this.length).sort();
  }
}

/**
 * A hosted sparse extent (KDMV): grain directory → grain tables → grains. Also reads streamOptimized
 * extents (compressed grains). Writes allocate grains at the end of the file, under a mutex so
 * allocations never race.
 *
 * Crash consistency of allocation (docs/format.md, "Crash consistency of sparse writes"): a table
 * entry must never reach the disk before the grain it points to, nor a GD entry before its zeroed
 * table. A write of a new grain therefore writes only the grain's data and sets the entry in the
 * cached table (so every later read and allocated() of this process sees it); the entry stays
 * *unwritten* — its table pinned in the cache — until the next flush(), which (1) fdatasyncs the
 * file (grain data and new zeroed tables durable), (2) writes the unwritten GT and redundant-GT
 * entries and the GD and RGD entries of new tables, (3) fsyncs. A power loss before (3) leaves the
 * new grains unreferenced: the space is leaked at the end of the file (as qemu leaks it) and they read
 * as before, holes. Overwrites of allocated grains need no ordering: they are durable after flush().
 */
export class SparseExtent implements Extent {
  readonly kind = 'SPARSE';
  readonly file: HostFile;
  readonly header: SparseHeader;
  readonly size: number;
  readonly grainBytes: number;
  writable: boolean;
  readonly compressed: boolean;
  #whyReadOnly: string;
  readonly #zeroedGte: boolean;
  readonly #gteCount: number;
  readonly #gtBytes: number;
  readonly #gd: Uint32Array;
  readonly #rgd: Uint32Array | undefined;
  readonly #cache = new Map<number, Uint32Array>();
  readonly #loading = new Map<number, Promise<Uint32Array>>();
  readonly #pinned = new Set<number>();
  readonly #cacheLimit: number;
  readonly #mutex = new Mutex();
  readonly #fixedMeta: Interval[];
  readonly #tableSectors: TableRuns;
  /**
   * Per GD entry: 1 when the table may hold data — its entry is set and it did not lie in a hole of
   * the file at open, or it was taken into memory since (read, or allocated by a write). 0: absent or
   * all zeros. Computed once at open; scans of the directory skip the zeros with a native indexOf.
   */
  readonly #mayHold: Uint8Array;
  #zeros: Buffer | undefined;
  #nextFree: number;
  #lastGrain: { index: number; data: Buffer } | undefined;
  /** Entries of new grains set in the cached tables but not written yet: table → entry → the value the file holds (0 or 1). */
  readonly #unwritten = new Map<number, Map<number, number>>();
  #unwrittenCount = 0;
  /** Tables allocated (zeroed in the file) whose GD and RGD entries are not written yet. */
  readonly #newTables = new Set<number>();

  private constructor(
    file: HostFile,
    header: SparseHeader,
    gd: Uint32Array,
    rgd: Uint32Array | undefined,
    nextFree: number,
    opts: SparseOpenOptions,
    layout: OpenedLayout,
  ) {
    this.#fixedMeta = layout.fixed;
    this.#tableSectors = layout.tables;
    this.#mayHold = layout.mayHold;
    this.file = file;
    this.header = header;
    this.size = header.capacity * SECTOR;
    this.grainBytes = header.grainSize * SECTOR;
    this.compressed = (header.flags & FLAG_COMPRESSED) !== 0;
    this.writable = opts.writable && !this.compressed;
    this.#whyReadOnly = this.compressed ? 'a streamOptimized (compressed) extent is written only when it is created, in order' : opts.whyReadOnly;
    this.#zeroedGte = (header.flags & FLAG_ZEROED_GTE) !== 0;
    this.#gteCount = header.numGTEsPerGT;
    this.#gtBytes = header.numGTEsPerGT * 4;
    this.#gd = gd;
    this.#rgd = rgd;
    this.#nextFree = nextFree;
    this.#cacheLimit = Math.max(4, Math.floor(gtCacheSettings.bytes / this.#gtBytes));
  }

  /** Refuse data writes from now on (an RDONLY extent line); descriptor rewrites stay possible. */
  refuseWrites(why: string): void {
    if (this.writable) {
      this.writable = false;
      this.#whyReadOnly = why;
    }
  }

  /** Where the embedded descriptor lives (bytes), if the extent has one. */
  get descriptorArea(): { offset: number; size: number } | undefined {
    const h = this.header;
    return h.descriptorSize > 0 ? { offset: h.descriptorOffset * SECTOR, size: h.descriptorSize * SECTOR } : undefined;
  }

  /**
   * Open: header (and footer for GD_AT_END), GD and RGD, and the checks those allow cheaply — every
   * table inside the file, no table overlapping another or the header, descriptor or directories (a
   * sort of the set directory entries). Grain tables are read and checked when first used (#table);
   * checkStructure() adds the check that costs O(data): no grain claimed twice.
   * Memory: GD + RGD, the sorted table sectors (4 bytes per set entry), one byte per GD entry, up to
   * GT_CACHE_BYTES of tables, and the file's data ranges over the table area (at most DATA_RANGES_MAX).
   */
  static async open(file: HostFile, opts: SparseOpenOptions): Promise<SparseExtent> {
    const path = file.path;
    if (file.size < SECTOR)
      throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file is ${file.size} bytes, shorter than a sparse header`, { file: path, offset: 0 });
    const hbuf = Buffer.alloc(SECTOR);
    await file.readExact(hbuf, 0, 'the sparse header');
    let header = parseSparseHeader(hbuf, path, 0);
    if (header.gdOffset === -1) header = await readFooter(file, header);
    const gdEntries = gdEntryCount(header);
    const gdBytes = gdEntries * 4;

    const readDirectory = async (sector: number, what: string, fieldOffset: number): Promise<Uint32Array> => {
      const at = sector * SECTOR;
      if (at + gdBytes > file.size) {
        throw new VmdkFormatError('ERR_VMDK_CORRUPT', `${what} (${gdBytes} bytes at sector ${sector}) extends past the end of the file (${file.size} bytes)`, {
          file: path,
          offset: fieldOffset,
        });
      }
      // Read straight into the entries' memory: one read and no copy (the directory of a 16 TiB disk is 2 MiB).
      const dir = new Uint32Array(gdEntries);
      await file.readExact(new Uint8Array(dir.buffer), at, what);
      if (!LITTLE_ENDIAN) swap32(dir);
      return dir;
    };
    const gd = await readDirectory(header.gdOffset, 'the grain directory', 56);
    let rgd: Uint32Array | undefined;
    if (header.flags & FLAG_RGD && header.rgdOffset !== 0) rgd = await readDirectory(header.rgdOffset, 'the redundant grain directory', 48);
    return SparseExtent.#assemble(file, header, gd, rgd, opts, false);
  }

  /**
   * The extent of a sparse file this process has just created (src/vmdk/create.ts) from the
   * directories it wrote, without reading them back: every table is a hole of the new file, none is
   * read, and the layout was built here, so the checks of open() are not repeated.
   */
  static created(file: HostFile, header: SparseHeader, gd: Uint32Array, rgd: Uint32Array | undefined, opts: SparseOpenOptions): Promise<SparseExtent> {
    return SparseExtent.#assemble(file, header, gd, rgd, opts, true);
  }

  /**
   * What open() learns from the directories, in one pass over each: the checks (every table inside
   * the file, no table overlapping another or the header, descriptor or directories), the sorted
   * table sectors, and which tables may hold data (those in holes of the file cannot). `fresh`: the
   * directories were just written by create.ts, the file's table area is all holes.
   */
  static async #assemble(
    file: HostFile,
    header: SparseHeader,
    gd: Uint32Array,
    rgd: Uint32Array | undefined,
    opts: SparseOpenOptions,
    fresh: boolean,
  ): Promise<SparseExtent> {
    const path = file.path;
    const gdSec = Math.ceil((gd.length * 4) / SECTOR);
    const gtSec = gtSectors(header);
    const gtBytes = header.numGTEsPerGT * 4;
    const fixed: Interval[] = [{ start: 0, end: 1, what: 'the header' }];
    if (header.descriptorSize > 0)
      fixed.push({ start: header.descriptorOffset, end: header.descriptorOffset + header.descriptorSize, what: 'the embedded descriptor' });
    fixed.push({ start: header.gdOffset, end: header.gdOffset + gdSec, what: 'the grain directory' });
    if (rgd) fixed.push({ start: header.rgdOffset, end: header.rgdOffset + gdSec, what: 'the redundant grain directory' });

    // Tables: inside the file (the error names the entry), collected as runs in one pass per
    // directory (table-runs.ts), then no overlaps — per run, not per table.
    const dirs: Array<{ dir: Uint32Array; name: string; at: number }> = [{ dir: gd, name: 'grain', at: header.gdOffset * SECTOR }];
    if (rgd) dirs.push({ dir: rgd, name: 'redundant grain', at: header.rgdOffset * SECTOR });
    // An entry s is inside the file when s·512 + gtBytes ≤ size, i.e. s + gtSec ≤ this (fractional) sector.
    const limit = fresh ? Infinity : (file.size - gtBytes) / SECTOR + gtSec;
    const collected = TableRuns.collect(
      dirs.map((d) => d.dir),
      gtSec,
      limit,
    );
    if (!(collected instanceof TableRuns)) {
      const { name, at } = dirs[collected.dir];
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', `${name} table ${collected.index} at sector ${collected.sector} extends past the end of the file`, {
        file: path,
        offset: at + collected.index * 4,
      });
    }
    const tables = collected;
    if (!fresh) checkLayout(path, dirs, tables, file.size, fixed);
    else fixed.sort((a, b) => a.start - b.start);

    // Which tables may hold data: those that do not lie wholly in a hole of the file (qemu-img
    // preallocates them as holes; such a table can only read as zeros and is never read).
    const mayHold = new Uint8Array(gd.length);
    if (!fresh && tables.tableCount > 0) {
      // A new file (fresh) has nothing written yet: every table is a hole.
      const lo = tables.start * SECTOR;
      const hi = tables.end * SECTOR;
      const ranges = await file.dataRanges(lo, hi, dataRangeSettings.max);
      const starts = new Float64Array(ranges.length);
      const ends = new Float64Array(ranges.length);
      ranges.forEach(([s, len], i) => {
        starts[i] = s;
        ends[i] = s + len;
      });
      tables.markData(0, mayHold, starts, ends, ranges.length >= dataRangeSettings.max ? ends[ends.length - 1] : hi, SECTOR);
    }

    let nextFree = Math.max(Math.ceil(file.size / SECTOR), header.overHead, fixed[fixed.length - 1].end);
    nextFree = Math.max(nextFree, tables.end);
    return new SparseExtent(file, header, gd, rgd, nextFree, opts, { fixed, tables, mayHold });
  }

  /**
   * The check open() leaves out because it costs O(data): read every table (those in holes of the
   * file are zeros) and refuse two entries that claim the same grain, which would make a write to one
   * virtual offset change another. Memory: 4 bytes per allocated grain while it runs.
   */
  async checkStructure(): Promise<void> {
    const n = this.#gteCount;
    const step = this.compressed ? 1 : this.header.grainSize;
    const maxGrains = Math.floor(this.file.size / (step * SECTOR)) + 1;
    const grains = new U32List();
    for (let gti = this.#nextMayHold(0, this.#gd.length); gti < this.#gd.length; gti = this.#nextMayHold(gti + 1, this.#gd.length)) {
      const table = await this.#table(gti);
      if (!table) continue;
      for (let e = 0; e < n; e++) {
        const s = table[e];
        if (s === 0 || (s === 1 && this.#zeroedGte)) continue;
        if (grains.length >= maxGrains) {
          throw new VmdkFormatError('ERR_VMDK_CORRUPT', 'grain tables point to more grains than the file can hold (grains claimed twice)', {
            file: this.file.path,
            offset: this.#gd[gti] * SECTOR + e * 4,
          });
        }
        grains.push(s);
      }
    }
    const sorted = grains.sorted();
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i] < sorted[i - 1] + step) {
        throw new VmdkFormatError('ERR_VMDK_CORRUPT', `grain at sector ${sorted[i]} is claimed twice (or overlaps the grain at sector ${sorted[i - 1]})`, {
          file: this.file.path,
          offset: sorted[i] * SECTOR,
        });
      }
    }
  }

  #remember(index: number, table: Uint32Array): void {
    // From now on this table's contents come from memory or the file, never from the hole snapshot
    // taken at open (a write may have filled the hole since).
    this.#mayHold[index] = 1;
    this.#cache.delete(index);
    this.#cache.set(index, table);
    if (this.#cache.size > this.#cacheLimit) {
      for (const key of this.#cache.keys()) {
        if (this.#cache.size <= this.#cacheLimit) break;
        if (!this.#pinned.has(key) && key !== index) this.#cache.delete(key);
      }
    }
  }

  /** False when table `index` is absent or known to be all zeros without reading it (a hole at open). */
  #mayHoldData(index: number): boolean {
    return this.#mayHold[index] === 1;
  }

  /** The first table index ≥ `from` that may hold data, or `end` (a native scan over #mayHold). */
  #nextMayHold(from: number, end: number): number {
    const i = this.#mayHold.indexOf(1, from);
    return i < 0 || i > end ? end : i;
  }

  /** The grain table `index` (undefined when its GD entry is 0), read and checked on first use. */
  async #table(index: number): Promise<Uint32Array | undefined> {
    const sector = this.#gd[index];
    if (sector === 0) return undefined;
    const hit = this.#cache.get(index);
    if (hit) {
      this.#cache.delete(index);
      this.#cache.set(index, hit);
      return hit;
    }
    let pending = this.#loading.get(index);
    if (!pending) {
      pending = (async () => {
        let t: Uint32Array;
        if (!this.#mayHoldData(index)) t = new Uint32Array(this.#gteCount);
        else {
          const buf = Buffer.alloc(this.#gtBytes);
          await this.file.readExact(buf, sector * SECTOR, `grain table ${index}`);
          t = u32View(buf);
          this.#checkTable(index, sector, t);
        }
        this.#remember(index, t);
        return t;
      })().finally(() => this.#loading.delete(index));
      this.#loading.set(index, pending);
    }
    return pending;
  }

  /** Entries within the capacity; grains inside the file and outside the metadata known at open. */
  #checkTable(index: number, sector: number, table: Uint32Array): void {
    const h = this.header;
    const path = this.file.path;
    const grainSec = h.grainSize;
    const step = this.compressed ? 1 : grainSec;
    const fileSectors = Math.ceil(this.file.size / SECTOR);
    const firstGrain = index * this.#gteCount;
    for (let e = 0; e < table.length; e++) {
      const s = table[e];
      if (s === 0 || (s === 1 && this.#zeroedGte)) continue;
      const g = firstGrain + e;
      const offset = sector * SECTOR + e * 4;
      if (g * grainSec >= h.capacity) {
        throw new VmdkFormatError('ERR_VMDK_CORRUPT', `grain table ${index} has an entry for grain ${g}, beyond the capacity`, { file: path, offset });
      }
      if (s >= fileSectors) {
        throw new VmdkFormatError('ERR_VMDK_CORRUPT', `grain ${g} points to sector ${s}, past the end of the file (${this.file.size} bytes)`, {
          file: path,
          offset,
        });
      }
      if (!this.compressed && s * SECTOR + grainSec * SECTOR > this.file.size) {
        throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file ends inside grain ${g} (sector ${s}; file has ${this.file.size} bytes)`, { file: path, offset });
      }
      let what: string | undefined;
      for (const m of this.#fixedMeta) if (m.start < s + step && s < m.end) what = m.what;
      const t = what === undefined ? this.#tableSectors.tableAt(s, step) : undefined;
      if (t !== undefined) what = `the grain table at sector ${t}`;
      if (what !== undefined) {
        throw new VmdkFormatError('ERR_VMDK_CORRUPT', `grain ${g} (sector ${s}) points into ${what}`, { file: path, offset });
      }
    }
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    if (this.compressed) return this.#readCompressed(offset, target);
    const gb = this.grainBytes;
    const n = this.#gteCount;
    const reads: Array<Promise<void>> = [];
    let pos = offset;
    let t = 0;
    // Runs of grains that are contiguous in the file become one read.
    let runFile = -1;
    let runT = 0;
    let runLen = 0;
    const flushRun = () => {
      if (runLen > 0) {
        const fileOff = runFile;
        const sub = target.subarray(runT, runT + runLen);
        reads.push(
          quiet(
            this.file.readAt(sub, fileOff).then((got) => {
              if (got !== sub.length) {
                throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file ends inside a grain (read ${sub.length} bytes at offset ${fileOff}, got ${got})`, {
                  file: this.file.path,
                  offset: fileOff + got,
                });
              }
            }),
          ),
        );
      }
      runLen = 0;
    };
    while (t < target.length) {
      const grain = Math.floor(pos / gb);
      const gti = Math.floor(grain / n);
      const table = await this.#table(gti);
      const tableEnd = (gti + 1) * n;
      for (let g = grain; g < tableEnd && t < target.length; g++) {
        const inGrain = pos - g * gb;
        const len = Math.min(gb - inGrain, target.length - t);
        const s = table ? table[g - gti * n] : 0;
        if (s === 0 || (s === 1 && this.#zeroedGte)) {
          flushRun();
          target.fill(0, t, t + len);
        } else {
          const fileOff = s * SECTOR + inGrain;
          if (runLen > 0 && runFile + runLen === fileOff) runLen += len;
          else {
            flushRun();
            runFile = fileOff;
            runT = t;
            runLen = len;
          }
        }
        pos += len;
        t += len;
      }
    }
    flushRun();
    await Promise.all(reads);
  }

  async #readCompressed(offset: number, target: Uint8Array): Promise<void> {
    const gb = this.grainBytes;
    const jobs: Array<Promise<void>> = [];
    let pos = offset;
    let t = 0;
    while (t < target.length) {
      const g = Math.floor(pos / gb);
      const inGrain = pos - g * gb;
      const len = Math.min(gb - inGrain, target.length - t);
      const gti = Math.floor(g / this.#gteCount);
      const table = await this.#table(gti);
      const s = table ? table[g - gti * this.#gteCount] : 0;
      if (s === 0 || (s === 1 && this.#zeroedGte)) target.fill(0, t, t + len);
      else {
        // Grains inflate in parallel on the libuv pool; at most 64 at a time per call.
        const at = t;
        jobs.push(quiet(this.#inflateGrain(g, s).then((data) => target.set(data.subarray(inGrain, inGrain + len), at))));
        if (jobs.length >= 64) await Promise.all(jobs.splice(0));
      }
      pos += len;
      t += len;
    }
    await Promise.all(jobs);
  }

  /** Read and inflate the compressed grain `g` stored at sector `s` (u64 lba, u32 size, zlib stream). */
  async #inflateGrain(g: number, s: number): Promise<Buffer> {
    if (this.#lastGrain?.index === g) return this.#lastGrain.data;
    const path = this.file.path;
    const at = s * SECTOR;
    const first = Buffer.alloc(Math.min(this.grainBytes + SECTOR, Math.max(0, this.file.size - at)));
    const got = await this.file.readAt(first, at);
    if (got < 12) throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file ends inside the marker of grain ${g}`, { file: path, offset: at });
    const lba = first.readBigUInt64LE(0);
    const size = first.readUInt32LE(8);
    if (lba !== BigInt(g) * BigInt(this.header.grainSize)) {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', `compressed grain at sector ${s} is marked for sector ${lba}, expected ${g * this.header.grainSize}`, {
        file: path,
        offset: at,
      });
    }
    if (size === 0 || size > this.grainBytes + MAX_COMPRESSED_SLACK) {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', `compressed grain ${g} claims ${size} bytes (bound ${this.grainBytes + MAX_COMPRESSED_SLACK})`, {
        file: path,
        offset: at + 8,
      });
    }
    let zdata: Buffer;
    if (12 + size <= got) zdata = first.subarray(12, 12 + size);
    else {
      if (at + 12 + size > this.file.size) {
        throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file ends inside compressed grain ${g} (${size} bytes at offset ${at + 12})`, {
          file: path,
          offset: at + 12,
        });
      }
      zdata = Buffer.alloc(size);
      await this.file.readExact(zdata, at + 12, `compressed grain ${g}`);
    }
    let data: Buffer;
    try {
      data = await inflateGrain(zdata, this.grainBytes);
    } catch (err) {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', `compressed grain ${g} does not inflate (${(err as Error).message})`, {
        file: path,
        offset: at + 12,
        cause: err,
      });
    }
    const expected = Math.min(this.grainBytes, this.size - g * this.grainBytes);
    if (data.length < expected) {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', `compressed grain ${g} inflates to ${data.length} bytes, expected ${this.grainBytes}`, {
        file: path,
        offset: at + 12,
      });
    }
    if (data.length < this.grainBytes) {
      const full = Buffer.alloc(this.grainBytes);
      data.copy(full);
      data = full;
    }
    this.#lastGrain = { index: g, data };
    return data;
  }

  async *allocated(start: number, end: number): AsyncIterable<ByteRange> {
    const gb = this.grainBytes;
    const n = this.#gteCount;
    let g = Math.floor(start / gb);
    const gEnd = Math.ceil(end / gb);
    let runStart = -1;
    let runEnd = -1;
    while (g < gEnd) {
      // Only tables that may hold data are read: a 16 TiB disk made by qemu-img lists 524,288, in
      // holes, skipped here by one native scan rather than one test each.
      const next = this.#nextMayHold(Math.floor(g / n), Math.ceil(gEnd / n));
      if (next * n > g) g = Math.min(next * n, gEnd);
      if (g >= gEnd) break;
      const gti = Math.floor(g / n);
      const tableEnd = Math.min((gti + 1) * n, gEnd);
      const table = await this.#table(gti);
      if (table) {
        for (; g < tableEnd; g++) {
          const s = table[g - gti * n];
          if (s === 0 || (s === 1 && this.#zeroedGte)) continue;
          const a = Math.max(start, g * gb);
          const b = Math.min(end, (g + 1) * gb);
          if (a === runEnd) runEnd = b;
          else {
            if (runEnd > runStart) yield { start: runStart, end: runEnd };
            runStart = a;
            runEnd = b;
          }
        }
      }
      g = tableEnd;
    }
    if (runEnd > runStart) yield { start: runStart, end: runEnd };
  }

  /**
   * Ranges inside [start, end) whose grains are unallocated (entry 0, or no table): in a snapshot
   * child they read from the parent. A zeroed grain (entry 1 with FLAG_ZEROED_GTE) is not one: it
   * reads as zeros whatever the parent holds, as in qemu. Coalesced, in order.
   */
  async *holes(start: number, end: number): AsyncIterable<ByteRange> {
    const gb = this.grainBytes;
    const n = this.#gteCount;
    let g = Math.floor(start / gb);
    const gEnd = Math.ceil(end / gb);
    let runStart = -1;
    let runEnd = -1;
    const add = (a: number, b: number): ByteRange | undefined => {
      if (a === runEnd) {
        runEnd = b;
        return undefined;
      }
      const done = runEnd > runStart ? { start: runStart, end: runEnd } : undefined;
      runStart = a;
      runEnd = b;
      return done;
    };
    while (g < gEnd) {
      const gti = Math.floor(g / n);
      const tableEnd = Math.min((gti + 1) * n, gEnd);
      const table = this.#mayHoldData(gti) ? await this.#table(gti) : undefined;
      if (!table) {
        const done = add(Math.max(start, g * gb), Math.min(end, tableEnd * gb));
        if (done) yield done;
      } else {
        for (; g < tableEnd; g++) {
          if (table[g - gti * n] !== 0) continue;
          const done = add(Math.max(start, g * gb), Math.min(end, (g + 1) * gb));
          if (done) yield done;
        }
      }
      g = tableEnd;
    }
    if (runEnd > runStart) yield { start: runStart, end: runEnd };
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw readOnlyError(this.#whyReadOnly, this.file.path);
    await this.#mutex.run(() => this.#write(offset, data));
  }

  async #write(offset: number, data: Uint8Array): Promise<void> {
    const gb = this.grainBytes;
    const n = this.#gteCount;
    const firstGrain = Math.floor(offset / gb);
    const lastGrain = Math.floor((offset + data.length - 1) / gb);
    // Make sure every grain table touched exists (allocate missing ones) and stays cached during the write.
    const tables = new Map<number, Uint32Array>();
    try {
      for (let gti = Math.floor(firstGrain / n); gti <= Math.floor(lastGrain / n); gti++) {
        this.#pinned.add(gti);
        tables.set(gti, (await this.#table(gti)) ?? (await this.#allocateTable(gti)));
      }
      // Plan the data writes: runs of file-contiguous pieces, each one gathered write.
      const runs: Array<{ at: number; bufs: Uint8Array[]; len: number }> = [];
      const updates: Array<{ gti: number; e: number; sector: number }> = [];
      const push = (at: number, bufs: Uint8Array[], len: number) => {
        const last = runs[runs.length - 1];
        if (last && last.at + last.len === at && last.bufs.length + bufs.length <= 1000) {
          last.bufs.push(...bufs);
          last.len += len;
        } else runs.push({ at, bufs: [...bufs], len });
      };
      let pos = offset;
      let t = 0;
      for (let g = firstGrain; g <= lastGrain; g++) {
        const gti = Math.floor(g / n);
        const e = g - gti * n;
        const table = tables.get(gti)!;
        const inGrain = pos - g * gb;
        const len = Math.min(gb - inGrain, data.length - t);
        const piece = data.subarray(t, t + len);
        const s = table[e];
        if (s === 0 || (s === 1 && this.#zeroedGte)) {
          const sector = this.#nextFree;
          if (sector + this.header.grainSize > MAX_SPARSE_FILE_SECTORS) {
            throw new VmdkFormatError('ERR_VMDK_LIMIT', 'sparse extent file would grow past 2 TiB (32-bit sector numbers)', { file: this.file.path });
          }
          this.#nextFree += this.header.grainSize;
          const bufs: Uint8Array[] = [];
          if (inGrain > 0) bufs.push(this.#zeroBuf(inGrain));
          bufs.push(piece);
          if (inGrain + len < gb) bufs.push(this.#zeroBuf(gb - inGrain - len));
          push(sector * SECTOR, bufs, gb);
          updates.push({ gti, e, sector });
        } else {
          push(s * SECTOR + inGrain, [piece], len);
        }
        pos += len;
        t += len;
      }
      await Promise.all(runs.map((r) => (r.bufs.length === 1 ? this.file.writeAt(r.bufs[0], r.at) : this.file.writevAt(r.bufs, r.at))));
      // The data is in the file: the cached tables point at it now (reads see it), the entries
      // reach the file at the next flush, after the data is durable.
      for (const u of updates) {
        const table = tables.get(u.gti)!;
        let unwritten = this.#unwritten.get(u.gti);
        if (!unwritten) this.#unwritten.set(u.gti, (unwritten = new Map()));
        unwritten.set(u.e, table[u.e]);
        this.#unwrittenCount++;
        table[u.e] = u.sector;
      }
      if (this.#unwrittenCount > MAX_UNWRITTEN_ENTRIES || this.#unwritten.size + this.#newTables.size > this.#cacheLimit / 2) await this.#commit();
    } finally {
      for (const gti of tables.keys()) this.#unpin(gti);
    }
  }

  /** Unpin a table unless it holds unwritten entries or is new (it must stay cached until the flush writes it). */
  #unpin(gti: number): void {
    if (!this.#unwritten.has(gti) && !this.#newTables.has(gti)) this.#pinned.delete(gti);
  }

  /**
   * Steps (1) and (2) of the flush (see the class comment): grain data and new zeroed tables durable,
   * then every unwritten entry written, GT and redundant GT, GD and RGD alike. The caller syncs after
   * it (step 3) when the entries must be durable too. Runs under the mutex.
   */
  async #commit(): Promise<void> {
    if (this.#unwritten.size === 0 && this.#newTables.size === 0) return;
    await this.file.datasync();
    const writes: Array<Promise<void>> = [];
    for (const [gti, entries] of this.#unwritten) {
      const table = this.#cache.get(gti)!;
      let lo = Infinity;
      let hi = -1;
      for (const e of entries.keys()) {
        lo = Math.min(lo, e);
        hi = Math.max(hi, e);
      }
      // One write per table copy: entries between lo and hi that are not unwritten are rewritten with the value they hold.
      const bytes = leBytes(table.subarray(lo, hi + 1));
      writes.push(this.file.writeAt(bytes, this.#gd[gti] * SECTOR + lo * 4));
      const r = this.#rgd?.[gti];
      if (r) writes.push(this.file.writeAt(bytes, r * SECTOR + lo * 4));
    }
    for (const gti of this.#newTables) {
      writes.push(this.file.writeAt(leBytes(this.#gd.subarray(gti, gti + 1)), this.header.gdOffset * SECTOR + gti * 4));
      if (this.#rgd) writes.push(this.file.writeAt(leBytes(this.#rgd.subarray(gti, gti + 1)), this.header.rgdOffset * SECTOR + gti * 4));
    }
    await Promise.all(writes);
    const tables = [...this.#unwritten.keys(), ...this.#newTables];
    this.#unwritten.clear();
    this.#unwrittenCount = 0;
    this.#newTables.clear();
    for (const gti of tables) this.#unpin(gti);
  }

  /** Entries lo..hi of a cached table as the file holds them (unwritten entries with their old value), little-endian. */
  #fileBytes(gti: number, table: Uint32Array, lo: number, hi: number): Buffer {
    const bytes = leBytes(table.subarray(lo, hi + 1));
    const unwritten = this.#unwritten.get(gti);
    if (unwritten) for (const [e, old] of unwritten) if (e >= lo && e <= hi) bytes.writeUInt32LE(old, (e - lo) * 4);
    return bytes;
  }

  /**
   * Deallocate the grains lying wholly inside [start, end) that hold data: their grain-table entries
   * become the zeroed-grain entry 1 when the header has FLAG_ZEROED_GTE, else 0 — but 0 only when
   * `holeReadsZero` (a disk without a parent: in a snapshot child entry 0 would expose the parent's
   * data, so nothing is done there). Returns the ranges deallocated (extent bytes, whole grains).
   *
   * Crash consistency: only table entries change, each a 4-byte store that a crash leaves old or new
   * (old = the data still there, as for any write not flushed yet). Freed grains are never reused
   * (allocation is always at the end of the file), so no entry can come to point at another grain's
   * data. The space is leaked, as qemu leaks it; `vmseal` copies and `qemu-img convert` reclaim it.
   */
  async zeroGrains(start: number, end: number, holeReadsZero: boolean): Promise<ByteRange[]> {
    if (!this.writable) throw readOnlyError(this.#whyReadOnly, this.file.path);
    const entry = this.#zeroedGte ? 1 : holeReadsZero ? 0 : undefined;
    if (entry === undefined || end <= start) return [];
    return this.#mutex.run(async () => {
      const gb = this.grainBytes;
      const n = this.#gteCount;
      const out: ByteRange[] = [];
      const first = Math.ceil(start / gb);
      // The last grain may be short (capacity not a multiple of the grain size): whole when `end` reaches the extent's end.
      const last = end >= this.size ? Math.ceil(this.size / gb) : Math.floor(end / gb);
      const writes: Array<Promise<void>> = [];
      const pinned: number[] = [];
      try {
        for (let gti = Math.floor(first / n); gti * n < last; gti++) {
          // Pinned until its write is done: an evicted table would be re-read from the file half updated.
          this.#pinned.add(gti);
          pinned.push(gti);
          const table = await this.#table(gti);
          if (!table) continue; // no table: every grain of it is a hole already
          let lo = -1;
          let hi = -1;
          for (let g = Math.max(first, gti * n); g < Math.min(last, (gti + 1) * n); g++) {
            const e = g - gti * n;
            const s = table[e];
            if (s === 0 || (s === 1 && this.#zeroedGte)) continue;
            table[e] = entry;
            // A grain whose entry was never written: the new entry is written now, not at the flush.
            const unwritten = this.#unwritten.get(gti);
            if (unwritten?.delete(e)) {
              this.#unwrittenCount--;
              if (unwritten.size === 0) this.#unwritten.delete(gti);
            }
            if (lo < 0) lo = e;
            hi = e;
            const a = g * gb;
            const b = Math.min(a + gb, this.size);
            const prev = out[out.length - 1];
            if (prev?.end === a) prev.end = b;
            else out.push({ start: a, end: b });
          }
          if (lo < 0) continue;
          // The touched span of the GT and of its redundant copy, each one write (entries between
          // lo and hi that did not change are rewritten with the value the file holds: an unwritten
          // entry keeps its old value until the flush has made its grain durable).
          const bytes = this.#fileBytes(gti, table, lo, hi);
          writes.push(this.file.writeAt(bytes, this.#gd[gti] * SECTOR + lo * 4));
          const r = this.#rgd?.[gti];
          if (r) writes.push(this.file.writeAt(bytes, r * SECTOR + lo * 4));
        }
        await Promise.all(writes);
      } finally {
        for (const gti of pinned) this.#unpin(gti);
      }
      return out;
    });
  }

  /**
   * A grain table for a GD entry that is 0: zeroed GT (+ redundant GT) written at the end of the file;
   * its GD (+ RGD) entries are set in memory and written by the next flush, once the zeroed tables are
   * durable. Until then the table stays pinned (it exists nowhere else).
   */
  async #allocateTable(gti: number): Promise<Uint32Array> {
    const sec = gtSectors(this.header);
    const zero = Buffer.alloc(sec * SECTOR);
    const gtSector = this.#nextFree;
    const rgtSector = this.#rgd ? gtSector + sec : 0;
    this.#nextFree += this.#rgd ? 2 * sec : sec;
    if (this.#nextFree > MAX_SPARSE_FILE_SECTORS) {
      throw new VmdkFormatError('ERR_VMDK_LIMIT', 'sparse extent file would grow past 2 TiB (32-bit sector numbers)', { file: this.file.path });
    }
    await this.file.writeAt(zero, gtSector * SECTOR);
    if (this.#rgd) await this.file.writeAt(zero, rgtSector * SECTOR);
    this.#pinned.add(gti);
    this.#newTables.add(gti);
    if (this.#rgd) this.#rgd[gti] = rgtSector;
    this.#gd[gti] = gtSector;
    const table = new Uint32Array(this.#gteCount);
    this.#remember(gti, table);
    return table;
  }

  #zeroBuf(len: number): Uint8Array {
    if (!this.#zeros) this.#zeros = Buffer.alloc(this.grainBytes);
    return this.#zeros.subarray(0, len);
  }

  /**
   * Rewrite the embedded descriptor area (NUL-padded) and make it durable. Only the sectors whose
   * bytes change are written: an edit that keeps the text's length (src/disk's fixed-width data
   * check) is then a write of the one sector holding it, which a crash cannot leave half old, half new.
   * Every write before it is made durable first (a flush), so a descriptor never describes data a
   * crash can still take away — src/disk's data check of unit 0 relies on it.
   */
  async writeDescriptorArea(bytes: Uint8Array): Promise<void> {
    const area = this.descriptorArea!;
    const buf = Buffer.alloc(area.size);
    buf.set(bytes);
    await this.#mutex.run(async () => {
      if (this.#unwritten.size > 0 || this.#newTables.size > 0) {
        await this.#commit();
        await this.file.sync();
      }
      const old = Buffer.alloc(area.size);
      const got = await this.file.readAt(old, area.offset);
      const writes: Array<Promise<void>> = [];
      for (let s = 0; s < area.size;) {
        if (s + SECTOR <= got && buf.subarray(s, s + SECTOR).equals(old.subarray(s, s + SECTOR))) {
          s += SECTOR;
          continue;
        }
        // A run of changed sectors is one write.
        let e = s + SECTOR;
        while (e < area.size && !(e + SECTOR <= got && buf.subarray(e, e + SECTOR).equals(old.subarray(e, e + SECTOR)))) e += SECTOR;
        writes.push(this.file.writeAt(buf.subarray(s, e), area.offset + s));
        s = e;
      }
      await Promise.all(writes);
      await this.file.sync();
    });
  }

  /** Make every write durable: steps (1)-(3) of the class comment, or one fsync when no entry is unwritten. */
  async flush(): Promise<void> {
    if (!this.writable && this.#unwritten.size === 0 && this.#newTables.size === 0) return;
    await this.#mutex.run(async () => {
      await this.#commit();
      await this.file.sync();
    });
  }

  /** Waits for the writes in progress; writes the unwritten entries (a flush) if there are any. */
  async close(): Promise<void> {
    await this.#mutex.run(async () => {
      if (this.#unwritten.size === 0 && this.#newTables.size === 0) return;
      await this.#commit();
      await this.file.sync();
    });
  }
}

/**
 * Mark a promise as handled now (it is awaited later with Promise.all): a read that fails while the
 * caller is still awaiting table loads must not become an unhandled rejection.
 */
function quiet<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function swap32(a: Uint32Array): void {
  for (let i = 0; i < a.length; i++) {
    const v = a[i];
    a[i] = ((v & 0xff) << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24);
    a[i] >>>= 0;
  }
}

/** Little-endian u32 array from bytes (copies, so the result is aligned). */
function u32View(buf: Buffer): Uint32Array {
  const out = new Uint32Array(buf.length >>> 2);
  new Uint8Array(out.buffer).set(buf.subarray(0, out.length * 4));
  if (!LITTLE_ENDIAN) swap32(out);
  return out;
}

/** Little-endian bytes of u32 entries. */
function leBytes(a: Uint32Array): Buffer {
  const out = Buffer.alloc(a.length * 4);
  for (let i = 0; i < a.length; i++) out.writeUInt32LE(a[i], i * 4);
  return out;
}

/**
 * streamOptimized (gdOffset = GD_AT_END): the real GD offsets are in the footer, one sector before
 * the end-of-stream marker; it must agree with the header on the geometry.
 */
async function readFooter(file: HostFile, header: SparseHeader): Promise<SparseHeader> {
  const path = file.path;
  const fileSectors = Math.floor(file.size / SECTOR);
  if (fileSectors < 3)
    throw new VmdkFormatError('ERR_VMDK_TRUNCATED', 'file too short for a footer (gdOffset says the grain directory is at the end)', {
      file: path,
      offset: file.size,
    });
  const footerAt = (fileSectors - 2) * SECTOR;
  const fbuf = Buffer.alloc(SECTOR);
  await file.readExact(fbuf, footerAt, 'the footer');
  let footer: SparseHeader;
  try {
    footer = parseSparseHeader(fbuf, path, footerAt);
  } catch (err) {
    if (err instanceof VmdkFormatError && err.code === 'ERR_VMDK_FORMAT') {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', 'invalid footer: no "KDMV" header one sector before the end-of-stream marker (file truncated?)', {
        file: path,
        offset: footerAt,
      });
    }
    throw err;
  }
  if (footer.gdOffset === -1) throw new VmdkFormatError('ERR_VMDK_CORRUPT', 'footer has no grain directory offset', { file: path, offset: footerAt + 56 });
  if (footer.capacity !== header.capacity || footer.grainSize !== header.grainSize || footer.numGTEsPerGT !== header.numGTEsPerGT) {
    throw new VmdkFormatError('ERR_VMDK_CORRUPT', 'footer disagrees with the header on capacity, grain size or table size', {
      file: path,
      offset: footerAt,
    });
  }
  return { ...header, gdOffset: footer.gdOffset, rgdOffset: footer.rgdOffset, flags: footer.flags };
}

/**
 * The checks of the table layout: no more tables than the file can hold, no table overlapping
 * another, nor the header, the descriptor or a directory (`fixed`, sorted here).
 */
function checkLayout(path: string, dirs: Array<{ dir: Uint32Array; name: string; at: number }>, tables: TableRuns, fileSize: number, fixed: Interval[]): void {
  const gtSec = tables.gtSec;
  if (tables.tableCount > Math.floor(fileSize / (gtSec * SECTOR))) {
    throw new VmdkFormatError('ERR_VMDK_CORRUPT', `the directories list ${tables.tableCount} tables, more than the file can hold (tables claimed twice)`, {
      file: path,
      offset: dirs[0].at,
    });
  }
  const nameTable = (sector: number): string => {
    for (const { dir, name } of dirs) {
      const i = dir.indexOf(sector);
      if (i >= 0) return `${name} table ${i}`;
    }
    return `a table at sector ${sector}`;
  };
  const overlap = (a: { start: number; what: string }, b: Interval): VmdkFormatError =>
    new VmdkFormatError('ERR_VMDK_CORRUPT', `${a.what} (sector ${a.start}) overlaps ${b.what} (sectors ${b.start}-${b.end - 1})`, {
      file: path,
      offset: a.start * SECTOR,
    });
  const clash = tables.overlap();
  if (clash) {
    // Run b starts inside run a: its first table overlaps the table of a it starts in.
    const b = tables.run(clash.b).start;
    const a = tables.run(clash.a);
    const t = a.start + Math.min(a.count - 1, Math.floor((b - a.start) / gtSec)) * gtSec;
    throw overlap({ start: b, what: nameTable(b) }, { start: t, end: t + gtSec, what: nameTable(t) });
  }
  fixed.sort((a, b) => a.start - b.start);
  for (let i = 1; i < fixed.length; i++) if (fixed[i].start < fixed[i - 1].end) throw overlap(fixed[i], fixed[i - 1]);
  for (const m of fixed) {
    const t = tables.tableAt(m.start, m.end - m.start);
    if (t !== undefined) throw overlap({ start: t, what: nameTable(t) }, m);
  }
}
