import { VmdkFormatError } from './errors.js';
import type { ByteRange, Extent } from './extent.js';
import type { HostFile } from './file.js';
import { readOnlySubformatError } from './read-only-formats.js';
import { gtCacheSettings } from './sparse-extent.js';
import { runWorkers } from '../util/run-workers.js';

/** A grain with no data in this layer: it reads as zeros alone, as its parent's bytes in a chain. */
export const GRAIN_HOLE = -1;
/** A grain marked zero in this layer (hides the parent's bytes). */
export const GRAIN_ZERO = -2;

/** The grain directory is read in pages of this many bytes, when first used. */
export const DIRECTORY_PAGE_BYTES = 4096;

/**
 * Grain reads of one readInto in flight at once: twice libuv's default pool of 4 threads, so the
 * pool never waits on JavaScript to hand it the next read, while a read of many scattered grains
 * (up to the caller's buffer / 512 bytes of them) no longer queues them all at once.
 */
const READS_IN_FLIGHT = 8;

/**
 * The two-level map of an ESX sparse extent (vmfsSparse "COWD", seSparse): a grain directory whose
 * entries name grain tables, whose entries name grains. Each format decodes its own entries and
 * checks each one against the file and its header as it is used; this interface is all the reader
 * below needs. Offsets are bytes.
 */
export interface GrainMap {
  readonly kind: 'VMFSSPARSE' | 'SESPARSE';
  /** Virtual size of the extent in bytes. */
  readonly size: number;
  readonly grainBytes: number;
  readonly grainsPerTable: number;
  /** Bytes of one grain table. */
  readonly tableBytes: number;
  /** Byte offset of the directory and the size of its entries. */
  readonly directoryOffset: number;
  readonly directoryEntryBytes: number;
  /** Entries the directory holds (at least the tables the capacity needs). */
  readonly directoryEntries: number;
  /** File offset of the table a directory entry names, or GRAIN_HOLE when it names none; throws on a bad entry. */
  tableOffset(entry: Buffer, index: number): number;
  /** File offset of the grain a table entry names, or GRAIN_HOLE / GRAIN_ZERO; throws on a bad entry. */
  grainOffset(entry: Buffer, tableAt: number, index: number): number;
  /** Whether a table entry names a grain of the file (not a hole or a zeroed grain); nothing checked. */
  namesGrain(entry: Buffer): boolean;
}

/**
 * A bounded LRU of file blocks (grain tables, directory pages) keyed by offset; concurrent requests
 * for one block share one read, and a failed read is not kept.
 */
class BlockCache {
  readonly #file: HostFile;
  readonly #limit: number;
  readonly #blocks = new Map<number, { read: Promise<Buffer>; length: number }>();
  #bytes = 0;

  constructor(file: HostFile, limit: number) {
    this.#file = file;
    this.#limit = limit;
  }

  get(offset: number, length: number, what: string): Promise<Buffer> {
    const hit = this.#blocks.get(offset);
    if (hit && hit.length === length) {
      this.#blocks.delete(offset);
      this.#blocks.set(offset, hit);
      return hit.read;
    }
    if (hit) this.#drop(offset);
    const block = { read: this.#readBlock(offset, length, what), length };
    block.read.catch(() => {
      if (this.#blocks.get(offset) === block) this.#drop(offset);
    });
    this.#blocks.set(offset, block);
    this.#bytes += length;
    while (this.#bytes > this.#limit && this.#blocks.size > 1) this.#drop(this.#blocks.keys().next().value as number);
    return block.read;
  }

  async #readBlock(offset: number, length: number, what: string): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    await this.#file.readExact(buf, offset, what);
    return buf;
  }

  #drop(offset: number): void {
    const b = this.#blocks.get(offset);
    if (!b) return;
    this.#blocks.delete(offset);
    this.#bytes -= b.length;
  }
}

/**
 * A read-only extent over a GrainMap: reads, allocation map and holes, with the directory and the
 * tables read when first used (time and memory follow the data, not the capacity). Writes are
 * refused: vmseal does not write these subformats (docs/vmdk.md).
 */
export class GrainMapExtent implements Extent {
  readonly kind: 'VMFSSPARSE' | 'SESPARSE';
  readonly size: number;
  readonly writable = false;
  readonly grainBytes: number;
  readonly file: HostFile;
  readonly #map: GrainMap;
  readonly #cache: BlockCache;
  readonly #subformat: string;
  /**
   * The directory entry that named each table offset met so far. Two entries naming one table, or
   * more tables than the file can hold, are refused when met: otherwise a few KiB of tables named
   * again and again would map (and make a copy or backup read) terabytes of "data" and make a full
   * check walk billions of entries. At most file size / table size entries.
   */
  readonly #tableOwners = new Map<number, number>();
  /**
   * The tables counted so far (each once, however often the cache reloads it), and the grains they
   * name. Grains named twice (every entry of a table naming one grain, or tables naming each
   * other's grains) would map up to grainsPerTable × grain / table size (128× for 512-byte COWD
   * grains) more "data" than the file holds; no valid file names more grains than fit in it, so more
   * is refused when met. This bounds the harm, not each duplicate: finding every grain named twice
   * would need a mark per grain-sized piece of the file (memory ∝ file size, and for COWD grains of
   * several sectors, which may start at any sector, overlaps too), while a few duplicates in a file
   * with room to spare cost no more reading than the file's own size.
   */
  readonly #countedTables = new Set<number>();
  #grainsNamed = 0;

  /** Tables and directory pages are cached like a monolithicSparse extent's tables (gtCacheSettings). */
  constructor(file: HostFile, map: GrainMap, subformat: string, cacheBytes = gtCacheSettings.bytes) {
    this.file = file;
    this.#map = map;
    this.kind = map.kind;
    this.size = map.size;
    this.grainBytes = map.grainBytes;
    this.#subformat = subformat;
    this.#cache = new BlockCache(file, cacheBytes);
  }

  /** The directory page holding entry `t`, and the index of its first entry. */
  async #page(t: number): Promise<{ page: Buffer; first: number }> {
    const m = this.#map;
    const perPage = DIRECTORY_PAGE_BYTES / m.directoryEntryBytes;
    const first = Math.floor(t / perPage) * perPage;
    const count = Math.min(perPage, m.directoryEntries - first);
    const pageAt = m.directoryOffset + first * m.directoryEntryBytes;
    return { page: await this.#cache.get(pageAt, count * m.directoryEntryBytes, 'the grain directory'), first };
  }

  /** File offset of table `t`, or GRAIN_HOLE. */
  async #table(t: number): Promise<number> {
    const { page, first } = await this.#page(t);
    const m = this.#map;
    const e = m.directoryEntryBytes;
    const at = m.tableOffset(page.subarray((t - first) * e, (t - first + 1) * e), t);
    if (at === GRAIN_HOLE) return at;
    const owner = this.#tableOwners.get(at);
    if (owner === undefined) {
      if ((this.#tableOwners.size + 1) * m.tableBytes > this.file.size)
        throw badEntry(
          this.file.path,
          m.directoryOffset + t * e,
          `grain directory entry ${t} names more grain tables than the file can hold (tables claimed twice)`,
        );
      this.#tableOwners.set(at, t);
    } else if (owner !== t) {
      throw badEntry(
        this.file.path,
        m.directoryOffset + t * e,
        `grain directory entries ${owner} and ${t} both name the grain table at offset ${at} (tables claimed twice)`,
      );
    }
    return at;
  }

  /**
   * The first table at or after `t` (and before `stop`) that exists, else `stop`: a run of empty
   * directory entries is scanned a page at a time, so mapping a huge, nearly empty disk costs one
   * cached read per 4 KiB of directory rather than one await per table.
   */
  async #nextTable(t: number, stop: number): Promise<number> {
    const e = this.#map.directoryEntryBytes;
    while (t < stop) {
      const { page, first } = await this.#page(t);
      const pageEnd = Math.min(first + page.length / e, stop);
      for (; t < pageEnd; t++) {
        if (this.#map.tableOffset(page.subarray((t - first) * e, (t - first + 1) * e), t) !== GRAIN_HOLE) return t;
      }
    }
    return stop;
  }

  /** The table at `offset` (of directory entry `t`), its grains counted against the file's size when first loaded. */
  async #loadTable(offset: number, t: number): Promise<Buffer> {
    const m = this.#map;
    const table = await this.#cache.get(offset, m.tableBytes, 'a grain table');
    if (this.#countedTables.has(offset)) return table;
    const entry = m.tableBytes / m.grainsPerTable;
    let named = 0;
    for (let i = 0; i < m.grainsPerTable; i++) if (m.namesGrain(table.subarray(i * entry, (i + 1) * entry))) named++;
    if ((this.#grainsNamed + named) * m.grainBytes > this.file.size) {
      throw badEntry(
        this.file.path,
        m.directoryOffset + t * m.directoryEntryBytes,
        `grain directory entry ${t}: its table brings the grains named to ${this.#grainsNamed + named} of ${m.grainBytes} bytes, more than the ${this.file.size}-byte file holds (grains named twice)`,
      );
    }
    this.#countedTables.add(offset);
    this.#grainsNamed += named;
    return table;
  }

  /**
   * Walk [start, end) grain by grain (a table without entries as one step): `visit(from, to, at)`
   * with `at` the file offset of `from`'s byte, GRAIN_HOLE or GRAIN_ZERO.
   */
  async #walk(start: number, end: number, visit: (from: number, to: number, at: number) => void): Promise<void> {
    const m = this.#map;
    const g = m.grainBytes;
    const span = g * m.grainsPerTable;
    const entry = m.tableBytes / m.grainsPerTable;
    let pos = start;
    while (pos < end) {
      const t = Math.floor(pos / span);
      const tableEnd = Math.min((t + 1) * span, end);
      const tableAt = await this.#table(t);
      if (tableAt === GRAIN_HOLE) {
        visit(pos, tableEnd, GRAIN_HOLE);
        pos = tableEnd;
        continue;
      }
      const table = await this.#loadTable(tableAt, t);
      while (pos < tableEnd) {
        const grain = Math.floor(pos / g);
        const inGrain = pos - grain * g;
        const to = Math.min(pos - inGrain + g, tableEnd);
        const i = grain - t * m.grainsPerTable;
        const at = m.grainOffset(table.subarray(i * entry, (i + 1) * entry), tableAt, i);
        visit(pos, to, at < 0 ? at : at + inGrain);
        pos = to;
      }
    }
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    // The file ranges to read: [file offset, start in target, end in target].
    const runs: Array<[number, number, number]> = [];
    // A run of grains that lie one after the other in the file too is read in one call.
    let runAt = -1;
    let runFrom = 0;
    let runTo = 0;
    const flushRun = (): void => {
      if (runTo > runFrom) runs.push([runAt, runFrom - offset, runTo - offset]);
      runTo = runFrom;
    };
    await this.#walk(offset, offset + target.length, (from, to, at) => {
      if (at < 0) {
        flushRun();
        target.fill(0, from - offset, to - offset);
      } else if (runTo > runFrom && runTo === from && runAt + (runTo - runFrom) === at) {
        runTo = to;
      } else {
        flushRun();
        runAt = at;
        runFrom = from;
        runTo = to;
      }
    });
    flushRun();
    // READS_IN_FLIGHT at a time: a large read of scattered 512-byte grains is tens of thousands of
    // runs, which at once would queue as many requests on libuv's pool (and hold a promise each)
    // for no gain. After a failed read no other starts, and the call settles only once none is
    // still writing into `target`.
    let next = 0;
    await runWorkers(Math.min(READS_IN_FLIGHT, runs.length), async (stopped) => {
      while (!stopped() && next < runs.length) {
        const [at, from, to] = runs[next++]!;
        await this.file.readExact(target.subarray(from, to), at, 'a grain');
      }
    });
  }

  async write(): Promise<void> {
    throw readOnlySubformatError(this.#subformat, this.file.path);
  }

  async *#ranges(start: number, end: number, want: (at: number) => boolean): AsyncIterable<ByteRange> {
    // Ranges are gathered per table so a walk of a huge disk holds one table's runs at a time.
    const span = this.#map.grainBytes * this.#map.grainsPerTable;
    const lastTable = Math.ceil(end / span);
    let run: ByteRange | undefined;
    const add = function* (r: ByteRange): Generator<ByteRange> {
      if (run && run.end === r.start) {
        run.end = r.end;
        return;
      }
      if (run) yield run;
      run = r;
    };
    for (let pos = start; pos < end;) {
      const t = Math.floor(pos / span);
      const next = await this.#nextTable(t, lastTable);
      if (next > t) {
        // tables t … next-1 do not exist: all their grains are holes
        const stop = Math.min(next * span, end);
        if (want(GRAIN_HOLE)) yield* add({ start: pos, end: stop });
        pos = stop;
        continue;
      }
      const stop = Math.min((t + 1) * span, end);
      const found: ByteRange[] = [];
      await this.#walk(pos, stop, (from, to, at) => {
        if (!want(at)) return;
        const last = found[found.length - 1];
        if (last && last.end === from) last.end = to;
        else found.push({ start: from, end: to });
      });
      for (const r of found) yield* add(r);
      pos = stop;
    }
    if (run) yield run;
  }

  /** check: 'full': decode (and so check) every directory entry and every entry of every table now. */
  async checkStructure(): Promise<void> {
    // Wanting no range, the walk visits (and so checks) every entry and yields nothing.
    const walk = this.#ranges(0, this.size, () => false)[Symbol.asyncIterator]();
    await walk.next();
  }

  allocated(start: number, end: number): AsyncIterable<ByteRange> {
    return this.#ranges(start, end, (at) => at >= 0);
  }

  holes(start: number, end: number): AsyncIterable<ByteRange> {
    return this.#ranges(start, end, (at) => at === GRAIN_HOLE);
  }

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}

/**
 * Read and parse the header of an ESX sparse extent, the `bytes` at the start of `file`. `magic`:
 * the little-endian u32 or u64 (high half 0) it starts with. A file with another magic is reported
 * as such by `parse` (which checks the magic first) even when it is too short for the header; a
 * file with the magic that ends inside the header is ERR_VMDK_TRUNCATED naming `name`.
 */
export async function readEsxHeader<H>(
  file: HostFile,
  bytes: number,
  magic: { value: number; bytes: 4 | 8 },
  name: string,
  parse: (buf: Buffer, file: string, fileSize: number) => H,
): Promise<H> {
  const buf = Buffer.alloc(bytes);
  await file.readAt(buf.subarray(0, Math.min(file.size, bytes)), 0);
  const hasMagic = buf.readUInt32LE(0) === magic.value && (magic.bytes === 4 || buf.readUInt32LE(4) === 0);
  if (file.size >= magic.bytes && !hasMagic) parse(buf, file.path, file.size); // throws: wrong magic
  if (file.size < bytes) {
    throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file ends inside the ${name} (${file.size} of ${bytes} bytes)`, {
      file: file.path,
      offset: file.size,
    });
  }
  return parse(buf, file.path, file.size);
}

/** Whether [a, a + al) and [b, b + bl) overlap. */
export function overlaps(a: number, al: number, b: number, bl: number): boolean {
  return a < b + bl && b < a + al;
}

/** The error of an entry that points outside where it may: names the file, the field and the offset. */
export function badEntry(file: string, offset: number, message: string): VmdkFormatError {
  return new VmdkFormatError('ERR_VMDK_CORRUPT', message, { file, offset });
}
