/**
 * Direct writes of a copy job's flat output: the data goes from the chunk buffer to the device
 * (O_DIRECT), not through the page cache.
 *
 * Why: through the page cache, every byte of the output is copied once more by the kernel into
 * freshly allocated page-cache pages, then written back by the flusher and by the final fsync. On
 * the 2-core VMs we measure on, that copy alone was 71% of the CPU of `vmseal encrypt` on a disk
 * (perf: copy_folio_from_iter_atomic), more than the encryption; with O_DIRECT the job used 3× less
 * CPU and its time became the device's write time (docs/performance.md). qemu-img pays the same copy
 * (it writes through the page cache unless told `-t none`), then `sync` waits for the writeback.
 *
 * Rules of O_DIRECT (Linux): the file offset, the length and the memory address must be multiples of
 * the device's logical block size. DIRECT_ALIGN (4096) covers 512-byte and 4K-native devices. The
 * engine's chunk buffers (allocateCipherBuffer) are page-aligned mappings, and the pieces of a
 * chunk start at data-unit or 64 KiB boundaries; the unaligned head or tail of a piece (the last
 * chunk of a capacity that is not a multiple of 4 KiB) goes through the VMDK layer's own buffered
 * handle, on other pages of the file, so the two paths never share a page.
 *
 * Direct writes are only an optimisation: if the file system refuses O_DIRECT at open, or a direct
 * write fails for any reason (EINVAL for an unexpected alignment, ENOSPC, EIO), that piece and the
 * rest of the job are written through the VMDK layer as before, which reports a real error in its
 * own typed way. Durability is unchanged: the fsync of every output file before the commit
 * (staging.ts) flushes the device's cache and the metadata of the blocks these writes allocated.
 *
 * The files are opened a second time, write-only (at most MAX_DIRECT_OPEN at once: a
 * twoGbMaxExtentFlat output has one file per 2 GiB); the VMDK layer's handles stay its own. Writes
 * may run concurrently (the copy job lets two chunks be written at once: positional writes into a
 * flat file do not depend on each other's order), each awaited by its caller.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { VirtualDisk } from '../vmdk/index.js';
import { writeFully } from '../util/file-io.js';
import { outputFiles, type OutputSegment } from './output-files.js';

/** Alignment of offsets, lengths and memory of direct writes. */
export const DIRECT_ALIGN = 4096;
/** Direct handles open at once. */
export const MAX_DIRECT_OPEN = 4;
/**
 * Chunks the copy job writes at once on the direct path. One at a time left the device idle ~40%
 * of the time between two chunk writes (strace: the event loop coming back to start the next one on
 * a loaded machine); two keep a write queued. More buys nothing on a single device and holds more
 * of the job's `depth` chunks in writes rather than in read-ahead.
 */
export const DIRECT_WRITE_CONCURRENCY = 2;

/**
 * How a copy job writes its output:
 *  - 'direct': flat data files with O_DIRECT (DirectWriter), on a disk-backed file system;
 *  - 'write-behind': through the page cache, with the kernel's writeback started as the job goes
 *    (WriteBehind): sparse outputs (grains are allocated by the VMDK layer, tables rewritten) or a
 *    platform without O_DIRECT;
 *  - 'page-cache': through the page cache only, on tmpfs/ramfs, where the page cache is the
 *    storage: writeback has nothing to do and O_DIRECT would save no copy.
 */
export type OutputWritePath = 'direct' | 'write-behind' | 'page-cache';

export interface WritePathFacts {
  /** The output folder is on tmpfs or ramfs (util/inline-io.ts isMemoryBacked). */
  memoryFs: boolean;
  /** Every data file of the output holds the virtual bytes as they are (raw, FLAT/VMFS extents). */
  flat: boolean;
  /** The platform has O_DIRECT (Linux). */
  directAvailable: boolean;
}

export function outputWritePath(f: WritePathFacts): OutputWritePath {
  if (f.memoryFs) return 'page-cache';
  return f.flat && f.directAvailable ? 'direct' : 'write-behind';
}

/** Whether `disk`'s data files are all flat (raw image, FLAT or VMFS extents). */
export function isFlatOutput(disk: VirtualDisk): boolean {
  if (disk.grainSize !== undefined) return false;
  const { segments } = outputFiles(disk);
  return segments.length > 0 && segments.every((s) => s.kind === 'FLAT' || s.kind === 'VMFS');
}

/** O_DIRECT of this platform, or undefined (not Linux). */
export function directFlag(): number | undefined {
  return (constants as { O_DIRECT?: number }).O_DIRECT;
}

interface DirectFile {
  path: string;
  /** The direct handle, once opening started (writes may run concurrently: one open per file). */
  fh: Promise<FileHandle> | undefined;
  /** Direct writes running on it: a busy handle is not closed. */
  busy: number;
}

export class DirectWriter {
  readonly #disk: VirtualDisk;
  readonly #flag: number;
  readonly #segments: OutputSegment[];
  readonly #files: DirectFile[];
  /** Files with a direct handle open, oldest first. */
  #open: DirectFile[] = [];
  #cursor = 0;
  #fallback = false;
  /** Bytes written with O_DIRECT (tests and the job's notes). */
  directBytes = 0;

  private constructor(disk: VirtualDisk, flag: number) {
    this.#disk = disk;
    this.#flag = flag;
    const { files, segments } = outputFiles(disk);
    this.#segments = segments;
    this.#files = files.map((path) => ({ path, fh: undefined, busy: 0 }));
  }

  /** Null when the output is not flat or the platform has no O_DIRECT: the caller writes through `disk`. */
  static open(disk: VirtualDisk, flag: number | undefined = directFlag()): DirectWriter | null {
    if (flag === undefined || !isFlatOutput(disk)) return null;
    return new DirectWriter(disk, flag);
  }

  /** True once a direct open or write failed: everything since went through the VMDK layer. */
  get fellBack(): boolean {
    return this.#fallback;
  }

  /** Write `data` at virtual `offset` (calls in increasing offset order keep the segment lookup cheap). */
  async write(offset: number, data: Buffer): Promise<void> {
    if (this.#fallback) return this.#disk.write(offset, data);
    const end = offset + data.length;
    const segs = this.#segments;
    if (this.#cursor >= segs.length || segs[this.#cursor].start > offset) this.#cursor = 0;
    while (this.#cursor < segs.length && segs[this.#cursor].end <= offset) this.#cursor++;
    let at = offset;
    for (let i = this.#cursor; at < end; i++) {
      const s = segs[i];
      // Not in a data segment (cannot happen for a flat output, whose segments cover the capacity):
      // the VMDK layer decides (and refuses a write into a ZERO extent).
      if (s === undefined || s.start > at) return this.#disk.write(at, data.subarray(at - offset));
      const partEnd = Math.min(end, s.end);
      await this.#writePart(s, at, data.subarray(at - offset, partEnd - offset));
      at = partEnd;
    }
  }

  /** One piece inside one segment: buffered head, direct middle, buffered tail. */
  async #writePart(s: OutputSegment, at: number, part: Buffer): Promise<void> {
    const filePos = s.fileOffset + (at - s.start);
    const head = (DIRECT_ALIGN - (filePos % DIRECT_ALIGN)) % DIRECT_ALIGN;
    const middle = Math.floor(Math.max(0, part.length - head) / DIRECT_ALIGN) * DIRECT_ALIGN;
    if (middle === 0 || (part.byteOffset + head) % DIRECT_ALIGN !== 0) return this.#disk.write(at, part);
    if (head > 0) await this.#disk.write(at, part.subarray(0, head));
    const body = part.subarray(head, head + middle);
    if (await this.#direct(this.#files[s.file], body, filePos + head)) this.directBytes += middle;
    else await this.#disk.write(at + head, body);
    if (head + middle < part.length) await this.#disk.write(at + head + middle, part.subarray(head + middle));
  }

  /** A direct write; false (and the job falls back for good) when the file or the write refuses it. */
  async #direct(f: DirectFile, data: Buffer, position: number): Promise<boolean> {
    f.busy++;
    try {
      if (!f.fh) {
        this.#closeIdle();
        f.fh = open(f.path, constants.O_WRONLY | this.#flag);
        this.#open.push(f);
      }
      await writeFully(await f.fh, data, position);
      return true;
    } catch {
      // See the module comment: the VMDK layer rewrites the whole piece and reports a real error.
      this.#fallback = true;
      return false;
    } finally {
      f.busy--;
    }
  }

  /**
   * Keep at most MAX_DIRECT_OPEN handles: close the oldest idle ones (writes go in increasing
   * offsets, so the oldest file is done with). One still being written is left open for now.
   */
  #closeIdle(): void {
    while (this.#open.length >= MAX_DIRECT_OPEN) {
      const i = this.#open.findIndex((f) => f.busy === 0);
      if (i < 0) return;
      const [f] = this.#open.splice(i, 1);
      const fh = f.fh;
      f.fh = undefined;
      void fh?.then((h) => h.close()).catch(() => undefined);
    }
  }

  /** Close the direct handles (call after the last write has settled). */
  async close(): Promise<void> {
    const open = this.#open;
    this.#open = [];
    for (const f of open) {
      const fh = f.fh;
      f.fh = undefined;
      await fh?.then((h) => h.close()).catch(() => undefined);
    }
  }
}
