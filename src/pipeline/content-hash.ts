/**
 * The two hashes `verify` reports.
 *
 * contentHash — cost in proportion to the data. The virtual disk is cut into 64 KiB blocks at
 * absolute offsets (the last block is shorter when the capacity is not a multiple of 64 KiB). Each
 * block that is not all zeros, in increasing offset order, contributes a 44-byte record:
 *
 *   offset  u64 big-endian  byte offset of the block in the virtual disk
 *   length  u32 big-endian  bytes in the block (65536; less only for a short last block)
 *   digest  32 bytes        SHA-256 of the block's bytes
 *
 * and contentHash = SHA-256 of the records one after the other. All-zero blocks contribute nothing
 * whether they are holes or allocated zeros, so the value depends on the content only (a sparse,
 * flat, raw or encrypted copy of the same content has the same contentHash) and holes are never read.
 * A disk with no non-zero block hashes to SHA-256 of nothing.
 *
 * sha256 — SHA-256 of the whole raw image, holes as zeros (what `sha256sum` prints for
 * `qemu-img convert -O raw`). SHA-256 has no shortcut for runs of zeros, so it costs in proportion to
 * the capacity: holes are fed from one shared zero buffer in large pieces, with event-loop turns so
 * that a signal stops it.
 */
import { createHash, type Hash } from 'node:crypto';
import { Yielder } from '../util/yield.js';
import { throwIfAborted } from './errors.js';
import { isZero } from './plan.js';

export const CONTENT_BLOCK = 64 * 1024;
const RECORD = 8 + 4 + 32;
const ZERO_PIECE = Buffer.alloc(4 << 20);

export class ContentHasher {
  readonly #outer = createHash('sha256');
  readonly #record = Buffer.alloc(RECORD);
  #next = 0;

  /**
   * Hash `data`, the disk's bytes from `offset` (a multiple of CONTENT_BLOCK, not before the end of
   * the previous call): whole blocks, except a short last block at the capacity.
   */
  update(offset: number, data: Buffer): void {
    if (offset % CONTENT_BLOCK !== 0 || offset < this.#next) throw new Error(`content hash fed out of order at ${offset}`);
    for (let p = 0; p < data.length; p += CONTENT_BLOCK) {
      const n = Math.min(CONTENT_BLOCK, data.length - p);
      if (isZero(data, p, p + n)) continue;
      this.#record.writeBigUInt64BE(BigInt(offset + p), 0);
      this.#record.writeUInt32BE(n, 8);
      createHash('sha256')
        .update(data.subarray(p, p + n))
        .digest()
        .copy(this.#record, 12);
      this.#outer.update(this.#record);
    }
    this.#next = offset + data.length;
  }

  digest(): string {
    return this.#outer.digest('hex');
  }
}

/** SHA-256 of a whole raw image fed in order: data where it was read, zeros for the gaps between. */
export class FullHasher {
  readonly #hash: Hash = createHash('sha256');
  readonly #yielder = new Yielder();
  #pos = 0;

  /** `capacity`: where the image ends; `what` names the job in an abort error. */
  constructor(
    private readonly capacity: number,
    private readonly what: string,
    private readonly signal?: AbortSignal,
  ) {}

  /** Feed zeros up to `end` (clipped to the capacity); `onZeros` is told each piece's length. */
  async zerosTo(end: number, onZeros?: (bytes: number) => void): Promise<void> {
    const stop = Math.min(end, this.capacity);
    while (this.#pos < stop) {
      throwIfAborted(this.signal, this.what);
      const n = Math.min(ZERO_PIECE.length, stop - this.#pos);
      this.#hash.update(n === ZERO_PIECE.length ? ZERO_PIECE : ZERO_PIECE.subarray(0, n));
      this.#pos += n;
      onZeros?.(n);
      await this.#yielder.turn();
    }
  }

  /** Feed `data`, the image's bytes at `offset` (after zeros up to it). */
  async update(offset: number, data: Buffer, onZeros?: (bytes: number) => void): Promise<void> {
    await this.zerosTo(offset, onZeros);
    const n = Math.max(0, Math.min(data.length, this.capacity - offset));
    this.#hash.update(data.subarray(0, n));
    this.#pos = offset + n;
  }

  /** Zeros to the capacity, then the hex digest. */
  async digest(onZeros?: (bytes: number) => void): Promise<string> {
    await this.zerosTo(this.capacity, onZeros);
    return this.#hash.digest('hex');
  }
}
