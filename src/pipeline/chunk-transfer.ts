/**
 * A copy job's chunks as native jobs: each chunk is read from the input's file, encrypted in place
 * (or left as it is, for a plain copy) and written to the output's file by one call of the addon
 * (transferChunk: pread → XTS → pwrite on one libuv pool thread), instead of the engine's three
 * hand-offs per chunk (a read on libuv's pool, the cipher on the addon's pool, a write on libuv's
 * pool, each a round trip through the event loop). The engine (runChunks) still runs the job — it
 * keeps `depth` chunks in flight, reuses their buffers, counts progress in order and checks for
 * cancellation between chunks; this module is its `read` step, and there is nothing left to write.
 *
 * Used for copies between flat files (flat-parts.ts: raw images, FLAT/VMFS extents) whose input is
 * plain, into a plain or newly encrypted flat output, for decryptions of an encrypted flat input
 * into a plain flat output and for its re-encryption under a new DEK (a deep rekey in copy mode),
 * written through the page cache (tmpfs: see copy.ts for why not on a
 * disk). A chunk that does not lie in one (input file, output file) run —
 * across an extent boundary, or in a ZERO extent of the input — goes through the VMDK layer and the
 * data cipher instead, as the engine would do it.
 *
 * The input's and the output's files are opened a second time (at most MAX_OPEN of each at once;
 * the VMDK layer's handles stay its own); the output's data reaches the disk with the fsync of the
 * job's flush (same inode, any descriptor).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { VmdkFormatError, type VirtualDisk } from '../vmdk/index.js';
import { transferAvailable, runTransfer } from '../xts/transfer.js';
import type { DataCipher } from '../disk/for-pipeline.js';
import { flatParts, type FlatPart } from './flat-parts.js';
import { nativeIoError } from './native-errors.js';
import type { Span } from './plan.js';

/**
 * Unset (the default) or anything but 0: the copy jobs use the native transfer where it applies; 0:
 * the engine reads, encrypts and writes each chunk as before. Measured on the quiet 2-core VM
 * (farm-bench, 9 pairs, 1 GiB raw → encrypted monolithicFlat in tmpfs): 0.90× the wall time and
 * 0.89× the CPU of the engine, every pair below 0.94× (docs/pipeline.md).
 */
export const CHUNK_TRANSFER_ENV = 'VMSEAL_CHUNK_TRANSFER';

export function chunkTransferWanted(): boolean {
  return process.env[CHUNK_TRANSFER_ENV] !== '0';
}

/**
 * Chunks in flight on this path (the job's `depth` if lower). Each job ends with a write into the
 * output file, and tmpfs takes the file's inode lock for each: with 4 jobs in flight up to 4
 * writers waited on one lock (8% more system time, presumably spent waiting on that lock) and the job's wall time was
 * 1.35x main's against 1.02x with 2 (farm-bench, loaded machine, convert of 1 GiB flat → flat).
 */
export const TRANSFER_DEPTH = 2;

/** Second handles open at once on each side. */
export const MAX_OPEN = 4;

export interface ChunkTransferJob {
  /** The input's stored bytes: its plaintext, or its ciphertext when `direction` is 'decrypt'. */
  source: VirtualDisk;
  /** The input's plaintext, for the chunks that go through the layers (default: `source`, for a plain input). */
  plainSource?: { readInto(position: number, target: Uint8Array): Promise<void> };
  /** The new output, created and empty. */
  target: VirtualDisk;
  /**
   * Encrypts the output ('encrypt': a plain input into a newly encrypted output) or decrypts the
   * input ('decrypt': an encrypted input into a plain output); the first byte of unit n is virtual
   * offset n × unitSize. Null: a plain copy.
   */
  cipher: DataCipher | null;
  /** 'reencrypt': `cipher` decrypts the input and `cipher2` encrypts the output (a deep rekey). */
  direction?: 'encrypt' | 'decrypt' | 'reencrypt';
  cipher2?: DataCipher;
}

interface OpenFile {
  fh: Promise<FileHandle>;
  /** Transfers using it: a busy handle is not closed. */
  busy: number;
}

class Handles {
  readonly #flags: string;
  readonly #open = new Map<string, OpenFile>();

  constructor(flags: string) {
    this.#flags = flags;
  }

  /** The handle of `path`, held until release(path). */
  async take(path: string): Promise<FileHandle> {
    let f = this.#open.get(path);
    if (!f) {
      this.#closeIdle();
      f = { fh: open(path, this.#flags), busy: 0 };
      f.fh.catch(() => undefined); // observed by the caller below
      this.#open.set(path, f);
    }
    f.busy++;
    try {
      return await f.fh;
    } catch (err) {
      f.busy--;
      if (this.#open.get(path) === f) this.#open.delete(path);
      throw err;
    }
  }

  release(path: string): void {
    const f = this.#open.get(path);
    if (f) f.busy--;
  }

  /** Close the oldest idle handles beyond MAX_OPEN - 1 (jobs go in increasing offsets: the oldest file is done). */
  #closeIdle(): void {
    for (const [path, f] of this.#open) {
      if (this.#open.size < MAX_OPEN) return;
      if (f.busy > 0) continue;
      this.#open.delete(path);
      void f.fh.then((h) => h.close()).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    const all = [...this.#open.values()];
    this.#open.clear();
    for (const f of all) await f.fh.then((h) => h.close()).catch(() => undefined);
  }
}

export class ChunkTransfer {
  readonly #job: ChunkTransferJob;
  readonly #parts: FlatPart[];
  readonly #in = new Handles('r');
  readonly #out = new Handles('r+');
  #cursor = 0;
  /** Bytes moved by native jobs (tests and notes). */
  nativeBytes = 0;

  private constructor(job: ChunkTransferJob, parts: FlatPart[]) {
    this.#job = job;
    this.#parts = parts;
  }

  /** Null when the copy is not between flat files or the addon lacks the call: the caller runs the engine as before. */
  static async open(job: ChunkTransferJob): Promise<ChunkTransfer | null> {
    if (!transferAvailable()) return null;
    const parts = await flatParts(job.source, job.target);
    return parts ? new ChunkTransfer(job, parts) : null;
  }

  /** Move `chunk` (read, encrypt, write) using `buf` (exactly the chunk's length, from allocateCipherBuffer). */
  async run(chunk: Span, buf: Buffer): Promise<void> {
    const part = this.#partOf(chunk);
    if (!part) return this.#throughLayers(chunk, buf);
    const inPath = part.sourcePath;
    const outPath = part.targetPath;
    const positionIn = chunk.offset - part.source.start + part.source.fileOffset;
    const positionOut = chunk.offset - part.target.start + part.target.fileOffset;
    let inFh: FileHandle | undefined;
    let outFh: FileHandle | undefined;
    try {
      inFh = await this.#in.take(inPath);
      outFh = await this.#out.take(outPath);
      const io = { fdIn: inFh.fd, positionIn, buffer: buf, fdOut: outFh.fd, positionOut };
      const cipher = this.#job.cipher;
      let n: number;
      try {
        const { direction, cipher2 } = this.#job;
        n = !cipher
          ? await runTransfer(io)
          : direction === 'reencrypt' && cipher2
            ? await cipher.reencrypt(io, chunk.offset, cipher2)
            : await cipher.transfer(io, chunk.offset / cipher.unitSize, direction === 'decrypt' ? 'decrypt' : 'encrypt');
      } catch (err) {
        const syscall = (err as { syscall?: unknown }).syscall;
        throw syscall === 'pread'
          ? nativeIoError(err, `read ${buf.length} bytes at offset ${positionIn}`, inPath)
          : nativeIoError(err, `write ${buf.length} bytes at offset ${positionOut}`, outPath);
      }
      if (n < buf.length) {
        throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `flat extent file ended while it was copied (at virtual offset ${chunk.offset + n})`, {
          file: inPath,
        });
      }
      this.nativeBytes += buf.length;
    } finally {
      if (inFh) this.#in.release(inPath);
      if (outFh) this.#out.release(outPath);
    }
  }

  /** The run holding all of `chunk`, or undefined (across two runs, or in none). */
  #partOf(chunk: Span): FlatPart | undefined {
    const parts = this.#parts;
    if (this.#cursor >= parts.length || parts[this.#cursor].start > chunk.offset) this.#cursor = 0;
    while (this.#cursor < parts.length && parts[this.#cursor].end <= chunk.offset) this.#cursor++;
    const p = parts[this.#cursor];
    return p !== undefined && p.start <= chunk.offset && chunk.offset + chunk.length <= p.end ? p : undefined;
  }

  /** The engine's way, for a chunk the native call cannot take whole. */
  async #throughLayers(chunk: Span, buf: Buffer): Promise<void> {
    // The plaintext (an encrypted input's layer decrypts it), then the output's cipher if it has one.
    await (this.#job.plainSource ?? this.#job.source).readInto(chunk.offset, buf);
    const { direction, cipher2 } = this.#job;
    const cipher = direction === 'reencrypt' ? cipher2 : direction === 'decrypt' ? null : this.#job.cipher;
    if (cipher) await cipher.encrypt(buf, chunk.offset / cipher.unitSize);
    await this.#job.target.write(chunk.offset, buf);
  }

  /** Close the second handles (after every transfer has settled). */
  async close(): Promise<void> {
    await this.#in.close();
    await this.#out.close();
  }
}
