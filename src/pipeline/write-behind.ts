/**
 * Write-behind for a copy job's output: after every WRITE_BEHIND_STEP bytes written into one of the
 * output's files, start the kernel's writeback of that file's dirty pages (native sync_file_range,
 * SYNC_FILE_RANGE_WRITE) and go on without waiting. The disk then writes while the job reads and
 * encrypts, and the fsync before the commit finds little left to do — instead of the whole image
 * sitting dirty in the page cache until the end (and the writer being throttled by the kernel
 * when the dirty limit is reached). Durability still comes from that fsync only: writeback started
 * here promises nothing.
 *
 * The output's files are opened a second time, read-only, when first written back (at most MAX_OPEN
 * at once): writeback works on the file's page cache, whatever descriptor names it, and the VMDK
 * layer's handles stay its own. Virtual offsets map to files through the descriptor's extent lines
 * (a raw output is one file: output-files.ts).
 *
 * Not used on tmpfs (nothing to write back) nor for files the direct writer writes with O_DIRECT
 * (they have no dirty pages): copy.ts decides, through outputWritePath (direct-write.ts).
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { VirtualDisk } from '../vmdk/index.js';
import { nativeWriteback, type NativeWriteback } from '../util/native-writeback.js';
import { outputFiles, type OutputSegment } from './output-files.js';

/** Bytes written into one file between two writeback starts. */
export const WRITE_BEHIND_STEP = 16 << 20;
/** Second handles open at once. */
export const MAX_OPEN = 4;

interface OutFile {
  path: string;
  fh: FileHandle | undefined;
  pending: number;
  running: Promise<void> | undefined;
}

export class WriteBehind {
  readonly #native: NativeWriteback;
  readonly #segments: OutputSegment[];
  readonly #files: OutFile[];
  /** Files with a second handle open, in the order they were opened. */
  #open: OutFile[] = [];
  #cursor = 0;

  private constructor(native: NativeWriteback, segments: OutputSegment[], files: OutFile[]) {
    this.#native = native;
    this.#segments = segments;
    this.#files = files;
  }

  /**
   * Null when the native call is missing (an older binary): the job then runs without write-behind.
   * `native` is the call to use (the addon's by default; tests pass one that records its calls).
   */
  static open(disk: VirtualDisk, native: NativeWriteback | null = nativeWriteback()): WriteBehind | null {
    if (!native) return null;
    const { files, segments } = outputFiles(disk);
    return new WriteBehind(
      native,
      segments,
      files.map((path) => ({ path, fh: undefined, pending: 0, running: undefined })),
    );
  }

  /** `length` bytes at virtual `offset` were written (call in increasing offset order for a cheap lookup). */
  written(offset: number, length: number): void {
    const end = offset + length;
    const segs = this.#segments;
    if (this.#cursor >= segs.length || segs[this.#cursor].start > offset) this.#cursor = 0;
    while (this.#cursor < segs.length && segs[this.#cursor].end <= offset) this.#cursor++;
    for (let i = this.#cursor; i < segs.length && segs[i].start < end; i++) {
      const s = segs[i];
      const f = this.#files[s.file];
      f.pending += Math.min(end, s.end) - Math.max(offset, s.start);
      if (f.pending >= WRITE_BEHIND_STEP && f.running === undefined) this.#start(f);
    }
  }

  #start(f: OutFile): void {
    f.pending = 0;
    // Errors are left to the fsync that ends the job: it reports an I/O error on this data too, and
    // write-behind is only ever an optimisation (a file that cannot be opened again is only not
    // written behind).
    f.running = (async () => {
      try {
        if (!f.fh) {
          await this.#closeIdle();
          f.fh = await open(f.path, 'r');
          this.#open.push(f);
        }
        await this.#native.writebackStart(f.fh.fd, 0, 0);
      } catch {
        // see above
      } finally {
        f.running = undefined;
      }
    })();
  }

  /**
   * Keep at most MAX_OPEN second handles: an output of thousands of extent files must not hold
   * thousands more descriptors. Jobs write in increasing offsets, so the file to close is the one
   * opened first; one still being written back is left open for now.
   */
  async #closeIdle(): Promise<void> {
    while (this.#open.length >= MAX_OPEN) {
      const i = this.#open.findIndex((f) => f.running === undefined);
      if (i < 0) return;
      const [f] = this.#open.splice(i, 1);
      const fh = f.fh;
      f.fh = undefined;
      await fh?.close().catch(() => undefined);
    }
  }

  /** Wait for the writeback starts in flight and close the second handles. */
  async close(): Promise<void> {
    for (const f of this.#files) await f.running;
    for (const f of this.#open) await f.fh?.close().catch(() => undefined);
    for (const f of this.#open) f.fh = undefined;
    this.#open = [];
  }
}
