/**
 * The kernel-side copy of a plain copy job: when neither side is encrypted and both hold their
 * bytes as they are (raw images, FLAT/VMFS extents: no grains, no cipher, no layout to convert),
 * the data is copied file to file by copy_file_range (native/fs_copy.cc) instead of being read into
 * a chunk buffer and written out again. The kernel then copies each byte once (page cache to page
 * cache on tmpfs and ext4) or not at all (XFS and btrfs share the blocks), where the engine's read
 * and write copy it twice through user space.
 *
 * Only the ranges of the source files that hold data are copied (SEEK_DATA/SEEK_HOLE through
 * fileDataRanges): the output's flat files are created sparse (createDisk), so the input's holes
 * stay holes. Unlike the engine, the kernel does not look at the bytes: zeros the input's files
 * hold as data are copied as data (the engine leaves all-zero 64 KiB blocks out).
 *
 * One hook point (copy.ts): kernelCopy() returns false, before it has written anything, when the
 * job is not a plain flat copy, when VMSEAL_KERNEL_COPY=0, for an output on tmpfs or ramfs unless
 * VMSEAL_KERNEL_COPY=1 (see kernelCopy), when the addon predates the call, when a
 * source file is shorter than its extent (the engine then reports ERR_VMDK_TRUNCATED), or when the
 * kernel refuses to copy between the two files (another file system: EXDEV; ENOSYS, EOPNOTSUPP,
 * EINVAL). The caller then runs the engine. Everything else is the job's as before: the output is
 * staged and renamed into place by copy.ts; this module fsyncs the output files it wrote (their
 * data may never have passed through the VMDK layer's handles) before it returns.
 *
 * On a disk, the writeback of each piece is started once it is copied (sync_file_range through the
 * addon, as the engine's write-behind does), so that the device writes while the kernel copies.
 *
 * Work is cut into pieces of at most COPY_RANGE_MAX_BYTES (64 MiB), KERNEL_COPY_CONCURRENCY of them
 * at once on libuv's pool (one copy per core of the machines we measure on: a kernel copy of page
 * cache pages is CPU work), and cancellation is checked before each piece, so SIGINT stops a job
 * within one piece's time.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { VmdkFormatError, type VirtualDisk } from '../vmdk/index.js';
import { fileDataRanges } from '../util/file-extents.js';
import { nativeCopy, type NativeCopy } from '../util/native-copy.js';
import { nativeWriteback, type NativeWriteback } from '../util/native-writeback.js';
import { throwIfAborted } from './errors.js';
import { flatParts, type FlatPart } from './flat-parts.js';
import { nativeIoError } from './native-errors.js';
import { isMemoryBacked } from '../util/inline-io.js';

/**
 * 0: the kernel copy is off (the engine reads and writes every plain copy); 1: on, also on tmpfs and
 * ramfs; unset or anything else: on for outputs on disk-backed file systems only.
 */
export const KERNEL_COPY_ENV = 'VMSEAL_KERNEL_COPY';
/** Pieces copied at once. */
export const KERNEL_COPY_CONCURRENCY = 2;
/** Data ranges asked of one SEEK_DATA scan (bounds the list; the scan goes on after the last). */
const SCAN_BATCH = 1024;

export interface KernelCopyJob {
  /** The input's stored bytes (must be plain: the caller checks that the input is not encrypted). */
  source: VirtualDisk;
  /** The new output, created and empty. */
  target: VirtualDisk;
  signal?: AbortSignal;
  /** What is running, for the cancellation message. */
  what: string;
  /** Virtual bytes done (copied, or a hole skipped): sums to the source's allocatedRanges() length. */
  progress(bytes: number): void;
  /** The copy call to use (the addon's by default; tests pass another). */
  native?: NativeCopy | null;
  /** The write-behind call to use on a disk (the addon's by default; tests pass another). */
  writeback?: NativeWriteback | null;
}

/**
 * Copy `job.source` into `job.target` in the kernel. True when done (every data range copied and
 * the output files fsynced); false, with nothing written, when the job must go through the engine.
 */
export async function kernelCopy(job: KernelCopyJob): Promise<boolean> {
  const native = job.native === undefined ? nativeCopy() : job.native;
  const setting = process.env[KERNEL_COPY_ENV];
  if (!native || setting === '0') return false;
  // On tmpfs/ramfs the engine is left the job unless VMSEAL_KERNEL_COPY=1: there every write into
  // one file holds its inode lock, so the kernel's single copy runs on one core at a time, while
  // the engine's two copies (read, write) run on two; measured under load (docs/performance.md),
  // the kernel copy took 20% less CPU but 1.2-1.3x the engine's wall time.
  const memoryFs = await isMemoryBacked(dirname(job.target.path));
  if (memoryFs && setting !== '1') return false;
  const parts = await flatParts(job.source, job.target);
  if (!parts) return false;
  // On a disk, each piece's writeback is started as soon as it is copied (as write-behind.ts does
  // for the engine), so the device writes while the kernel copies and the final fdatasync finds
  // little left; on tmpfs there is nothing to write back.
  const behind = memoryFs ? null : job.writeback === undefined ? nativeWriteback() : job.writeback;
  const copier = new Copier(native, behind, job);
  try {
    for (const part of parts) {
      if (!(await copier.part(part))) return false;
    }
    await copier.sync();
    return true;
  } finally {
    await copier.close();
  }
}

class Copier {
  readonly #native: NativeCopy;
  readonly #behind: NativeWriteback | null;
  readonly #job: KernelCopyJob;
  /** The handles of the current part; an output's is kept while the next part writes the same file. */
  #in: { path: string; fh: FileHandle } | undefined;
  #out: { path: string; fh: FileHandle } | undefined;
  /**
   * Whether the kernel has copied a piece: before that, its refusal hands the whole job to the engine;
   * after, the refused piece is finished through the VMDK layer (#userCopy).
   */
  #started = false;

  constructor(native: NativeCopy, behind: NativeWriteback | null, job: KernelCopyJob) {
    this.#native = native;
    this.#behind = behind;
    this.#job = job;
  }

  /** Copy one part's data ranges; false when the kernel refused the very first copy. */
  async part(p: FlatPart): Promise<boolean> {
    const input = await this.#open('in', p.sourcePath, 'r');
    const output = await this.#open('out', p.targetPath, 'r+');
    // File position = virtual offset + base.
    const inBase = p.source.fileOffset - p.source.start;
    const outBase = p.target.fileOffset - p.target.start;
    const max = this.#native.COPY_RANGE_MAX_BYTES;
    let from = p.start;
    while (from < p.end) {
      throwIfAborted(this.#job.signal, this.#job.what);
      let ranges: Array<[number, number]>;
      try {
        ranges = fileDataRanges(input.fd, from + inBase, p.end + inBase, SCAN_BATCH);
      } catch (err) {
        throw nativeIoError(err, `find the data ranges of bytes ${from + inBase}-${p.end + inBase}`, p.sourcePath);
      }
      const last = ranges[ranges.length - 1];
      // A full list leaves the rest unknown: the next scan starts after its last range.
      const to = ranges.length === SCAN_BATCH && last ? last[0] + last[1] - inBase : p.end;
      const pieces: Array<[number, number]> = [];
      let data = 0;
      for (const [at, length] of ranges) {
        data += length;
        for (let v = at - inBase; v < at - inBase + length; v += max) pieces.push([v, Math.min(max, at - inBase + length - v)]);
      }
      if (!this.#started && pieces.length > 0) {
        // The first piece alone: it tells whether the kernel copies between these files at all.
        const [v, length] = pieces.shift()!;
        if ((await this.#copy(input, output, inBase, outBase, v, length, true)) < 0) return false;
        this.#started = true;
        this.#job.progress(length);
      }
      let next = 0;
      let failed = false; // one failure stops the other workers at their next piece
      const worker = async (): Promise<void> => {
        while (next < pieces.length && !failed) {
          const [v, length] = pieces[next++];
          try {
            throwIfAborted(this.#job.signal, this.#job.what);
            await this.#copy(input, output, inBase, outBase, v, length, false);
          } catch (err) {
            failed = true;
            throw err;
          }
          this.#job.progress(length);
        }
      };
      await settleAll(Array.from({ length: Math.min(KERNEL_COPY_CONCURRENCY, pieces.length) }, worker));
      this.#job.progress(to - from - data); // the holes, skipped
      from = to;
    }
    return true;
  }

  /** One piece: the kernel's copy, then (should it stop short) the rest through the VMDK layer. */
  async #copy(input: FileHandle, output: FileHandle, inBase: number, outBase: number, v: number, length: number, probe: boolean): Promise<number> {
    let at = 0;
    while (at < length) {
      let n: number;
      try {
        n = await this.#native.copyFileRange(input.fd, v + at + inBase, output.fd, v + at + outBase, length - at);
      } catch (err) {
        throw nativeIoError(err, `copy ${length - at} bytes at virtual offset ${v + at} from ${this.#in?.path ?? ''}`, this.#out?.path ?? '');
      }
      if (n < 0 && probe && at === 0) return -1;
      if (n < 0) {
        // The kernel copied some of these files and now refuses: finish this piece in user space.
        await this.#userCopy(v + at, length - at);
        return length;
      }
      if (n === 0) {
        throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `flat extent file ended while it was copied (at virtual offset ${v + at})`, {
          file: this.#in?.path,
        });
      }
      at += n;
    }
    // Errors are left to the fdatasync that ends the copy: it reports an I/O error on this data too.
    await this.#behind?.writebackStart(output.fd, v + outBase, length).catch(() => false);
    return length;
  }

  async #userCopy(position: number, length: number): Promise<void> {
    const buf = Buffer.allocUnsafe(Math.min(length, 1 << 20));
    for (let at = 0; at < length; at += buf.length) {
      const part = buf.subarray(0, Math.min(buf.length, length - at));
      await this.#job.source.readInto(position + at, part);
      await this.#job.target.write(position + at, part);
    }
  }

  async #open(which: 'in' | 'out', path: string, flags: string): Promise<FileHandle> {
    const cur = which === 'in' ? this.#in : this.#out;
    if (cur?.path === path) return cur.fh;
    if (cur) {
      if (which === 'out') await cur.fh.datasync();
      await cur.fh.close();
    }
    const fh = await open(path, flags);
    if (which === 'in') this.#in = { path, fh };
    else this.#out = { path, fh };
    return fh;
  }

  /** Make the last output file's data durable (earlier ones were synced when the copy left them). */
  async sync(): Promise<void> {
    await this.#out?.fh.datasync();
  }

  async close(): Promise<void> {
    for (const h of [this.#in, this.#out]) await h?.fh.close().catch(() => undefined);
    this.#in = this.#out = undefined;
  }
}

/**
 * Wait for every promise, then rethrow the first failure: no copy may still be running on a handle
 * when the caller closes it.
 */
async function settleAll(work: Array<Promise<void>>): Promise<void> {
  const results = await Promise.allSettled(work);
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}
