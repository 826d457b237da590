/**
 * EncryptedDisk: a VirtualDisk whose reads decrypt and whose writes encrypt, at any offset and
 * length, over an inner VMDK disk that holds ciphertext.
 *
 * Rules that keep the on-disk data well formed (docs/format.md):
 * - Data unit i (unitSize bytes at virtual offset i·unitSize) is XTS-encrypted with tweak i.
 * - Ranges the inner disk does not back with data (unallocated or zeroed sparse grains, ZERO
 *   extents) read as plaintext zeros; they are never "decrypted".
 * - A write never leaves a grain half plaintext-zero and half ciphertext: a write that touches an
 *   unallocated grain writes the whole grain (encrypted zeros around the data).
 * - A write covering part of a data unit reads, decrypts, patches and re-encrypts that unit.
 * - Format version 2: a write that changes the plaintext of unit 0 updates the data check first
 *   (docs/format.md, "The data check"): (1) pending = the new value, durably; (2) unit 0 written and
 *   synced; (3) committed = the new value, lazily on flush() or close(). Writes are serialized, so
 *   there is never more than one pending value.
 */
import { DiskError } from './errors.js';
import type { DataCipher } from './cipher.js';
import { formatDataCheck, type DataCheckKey } from './data-check.js';
import type { AllocatedRange as ByteRange, Descriptor, VirtualDisk } from '../vmdk/index.js';
import { LINE, type EncryptionParams } from './params.js';
import { expected } from '../errors.js';
import { MAX_READ_BYTES } from '../vmdk/index.js';

/** The data check of an open version-2 disk. Not exported from the package, yet not marked internal: the .d.ts of unit-zero.ts names it. */
export interface DataCheckState {
  key: DataCheckKey;
  /** The value that matches unit 0 as it is on disk now; undefined after a unit-0 write failed (read it again). */
  current: string | undefined;
  /** The descriptor's committed slot is not `current` yet, or a stale pending slot is to be cleared. */
  commitPending: boolean;
}

export class EncryptedDisk {
  readonly encrypted = true as const;
  readonly path: string;
  /** The encryption lines of the descriptor (the KeySafe is wrapped: no key material). */
  readonly encryption: Readonly<EncryptionParams>;
  /** @internal the disk holding ciphertext (src/pipeline writes whole grains to it directly). */
  readonly innerDisk: VirtualDisk;
  /** @internal the data cipher (src/pipeline encrypts on the thread pool with it). */
  readonly dataCipher: DataCipher;
  #closed = false;
  #writes: Promise<unknown> = Promise.resolve();
  /** writeUnordered() calls running outside the queue (flush and close wait for them too). */
  readonly #direct = new Set<Promise<void>>();
  #check: DataCheckState | undefined;
  /** The inner disk is flat extents only (or raw): every range holds data (ciphertext). */
  readonly #allData: boolean;

  constructor(path: string, inner: VirtualDisk, encryption: EncryptionParams, cipher: DataCipher, check?: DataCheckState) {
    this.path = path;
    this.innerDisk = inner;
    this.encryption = Object.freeze({ ...encryption });
    this.dataCipher = cipher;
    this.#check = check;
    const flat = (type: string): boolean => type === 'FLAT' || type === 'VMFS';
    this.#allData = inner.grainSize === undefined && (inner.descriptor ? inner.descriptor.extents.every((e) => flat(e.type)) : inner.format === 'raw');
  }

  /** @internal The data check of this disk's key and id for a plaintext of unit 0 (undefined: format version 1). */
  dataCheckValue(unit0: Uint8Array): string | undefined {
    return this.#check ? formatDataCheck({ committed: this.#check.key.value(this.encryption.diskId, this.unitSize, unit0), pending: null }) : undefined;
  }

  get capacity(): number {
    return this.innerDisk.capacity;
  }
  get format(): 'vmdk' | 'raw' {
    return this.innerDisk.format;
  }
  get subformat(): string {
    return this.innerDisk.subformat;
  }
  get readOnly(): boolean {
    return this.innerDisk.readOnly;
  }
  get grainSize(): number | undefined {
    return this.innerDisk.grainSize;
  }
  get descriptor(): Descriptor | undefined {
    return this.innerDisk.descriptor;
  }
  get unitSize(): number {
    return this.encryption.unitSize;
  }

  files(): string[] {
    return this.innerDisk.files();
  }

  /** Bytes the disk's files use on the file system. */
  allocatedBytes(): Promise<number> {
    return this.innerDisk.allocatedBytes();
  }

  allocatedRanges(start?: number, end?: number): AsyncIterable<ByteRange> {
    return this.innerDisk.allocatedRanges(start, end);
  }

  async read(position: number, length: number): Promise<Buffer> {
    this.#checkRange('read', position, length);
    if (length > MAX_READ_BYTES) {
      throw new DiskError(
        'ERR_INVALID_ARGUMENT',
        `${expected(`a length of at most ${MAX_READ_BYTES} bytes`, 'length', length)}; use readInto() with your own buffer for more`,
      );
    }
    const out = Buffer.alloc(length);
    await this.#readPlain(position, out);
    return out;
  }

  async readInto(position: number, target: Uint8Array): Promise<void> {
    if (!ArrayBuffer.isView(target)) throw new DiskError('ERR_INVALID_ARGUMENT', expected('a Uint8Array', 'target', target));
    this.#checkRange('read', position, target.byteLength);
    await this.#readPlain(position, target);
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    if (!ArrayBuffer.isView(data)) throw new DiskError('ERR_INVALID_ARGUMENT', expected('a Uint8Array', 'data', data));
    this.#checkRange('write', position, data.byteLength);
    if (this.readOnly) throw new DiskError('ERR_READ_ONLY', `cannot write to ${this.path}: it was opened read-only`);
    if (data.byteLength === 0) return;
    // Writes are serialized: a read-modify-write of a shared unit or grain must not interleave.
    const run = this.#writes.then(() => this.#writePlain(position, data));
    this.#writes = run.catch(() => undefined);
    return run;
  }

  /**
   * @internal A write whose caller orders overlapping writes itself (src/serve holds a range lock per
   * data unit) and gives up `data`: it is encrypted in place and holds ciphertext afterwards. A
   * unit-aligned write to a flat disk that leaves unit 0 alone (whose data check must be updated in
   * order) runs at once, concurrently with others; everything else (partial units, sparse grains,
   * unit 0) joins the serialized queue of write().
   */
  async writeUnordered(position: number, data: Uint8Array): Promise<void> {
    this.#checkRange('write', position, data.byteLength);
    if (this.readOnly) throw new DiskError('ERR_READ_ONLY', `cannot write to ${this.path}: it was opened read-only`);
    if (data.byteLength === 0) return;
    const u = this.unitSize;
    const direct = this.grainSize === undefined && position % u === 0 && data.byteLength % u === 0 && (position > 0 || !this.#check);
    if (!direct) {
      const run = this.#writes.then(() => this.#writePlain(position, data, true));
      this.#writes = run.catch(() => undefined);
      return run;
    }
    const run = this.dataCipher.encrypt(data, position / u).then(() => this.innerDisk.write(position, data));
    const tracked = run.catch(() => undefined);
    this.#direct.add(tracked);
    void tracked.then(() => this.#direct.delete(tracked));
    return run;
  }

  /**
   * Deallocate the whole sparse grains inside [position, position+length) so they read as zeros
   * (see VirtualDisk.deallocate), except unit 0's grain: it keeps ciphertext, which the data check
   * needs (a hole reads as zeros under any key and proves nothing). Returns the ranges deallocated;
   * the caller writes zeros over the rest where it wants zeros. Serialized with writes.
   */
  async deallocate(position: number, length: number): Promise<ByteRange[]> {
    this.#checkRange('deallocate', position, length);
    if (this.readOnly) throw new DiskError('ERR_READ_ONLY', `cannot deallocate in ${this.path}: it was opened read-only`);
    const g = this.grainSize;
    const end = position + length;
    const start = g === undefined ? position : Math.max(position, g);
    if (g === undefined || end <= start) return [];
    const run = this.#writes.then(() => this.innerDisk.deallocate(start, end - start));
    this.#writes = run.catch(() => undefined);
    return run;
  }

  async flush(): Promise<void> {
    this.#checkOpen();
    await Promise.all([this.#writes, ...this.#direct]);
    await this.innerDisk.flush();
    await this.#commitCheck();
  }

  /** `await using disk = await openDisk(…)` closes the disk at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await Promise.all([this.#writes, ...this.#direct]);
    let commitError: unknown;
    await this.#commitCheck().catch((err: unknown) => {
      commitError = err;
    });
    this.#closed = true;
    try {
      await this.innerDisk.close();
    } finally {
      this.dataCipher.dispose();
      this.#check?.key.dispose();
    }
    // Not fatal to the data (the pending slot matches unit 0), but the caller should know.
    if (commitError !== undefined) throw commitError;
  }

  /** Step 3 of the update protocol: committed = the value unit 0 matches now, no pending value. */
  async #commitCheck(): Promise<void> {
    const check = this.#check;
    if (!check?.commitPending || this.readOnly) return;
    const run = this.#writes.then(async () => {
      if (!check.commitPending) return;
      if (check.current === undefined) {
        // A failed write left unit 0 uncertain: commit what it holds now, once that is durable.
        check.current = await this.#unitZeroValue(check);
        await this.innerDisk.flush();
      }
      await this.#storeCheck(check.current, null);
      check.commitPending = false;
    });
    this.#writes = run.catch(() => undefined);
    await run;
  }

  /** The data check of unit 0 as the inner disk holds it now. */
  async #unitZeroValue(check: DataCheckState): Promise<string> {
    const unit0 = Buffer.alloc(this.unitSize);
    await this.#readPlain(0, unit0);
    return check.key.value(this.encryption.diskId, this.unitSize, unit0);
  }

  async #storeCheck(committed: string, pending: string | null): Promise<void> {
    const value = formatDataCheck({ committed, pending });
    // Same length every time: an embedded descriptor changes in the one sector holding the line.
    await this.innerDisk.updateDescriptor((d) => {
      d.set(LINE.dataCheck, value);
    });
  }

  /** @internal Decrypt `buf` (read raw from the inner disk at `start`, unit-aligned) where the inner disk has data. */
  async decryptAllocated(buf: Uint8Array, start: number): Promise<void> {
    const u = this.unitSize;
    // Flat extents back every byte: no need to ask (two async generators per read, on the serve hot path).
    if (this.#allData) return this.dataCipher.decrypt(buf, start / u);
    const end = start + buf.byteLength;
    for await (const r of this.innerDisk.allocatedRanges(start, end)) {
      // Ranges are whole grains or extents; round out to units defensively (a unit is never split in files vmseal writes).
      const s = Math.max(start, Math.floor(r.offset / u) * u);
      const e = Math.min(end, Math.ceil((r.offset + r.length) / u) * u);
      if (e <= s) continue;
      await this.dataCipher.decrypt(buf.subarray(s - start, e - start), s / u);
    }
  }

  async #readPlain(position: number, target: Uint8Array): Promise<void> {
    this.#checkOpen();
    const length = target.byteLength;
    if (length === 0) return;
    const u = this.unitSize;
    const start = Math.floor(position / u) * u;
    const end = Math.ceil((position + length) / u) * u;
    const aligned = start === position && end === position + length;
    const buf = aligned ? target : Buffer.allocUnsafe(end - start);
    await this.innerDisk.readInto(start, buf);
    await this.decryptAllocated(buf, start);
    if (!aligned) Buffer.from(target.buffer, target.byteOffset, length).set(buf.subarray(position - start, position - start + length));
  }

  async #isAllocated(start: number, end: number): Promise<boolean> {
    for await (const r of this.innerDisk.allocatedRanges(start, end)) {
      if (r.length > 0) return true;
    }
    return false;
  }

  /** With `inPlace`, an aligned write encrypts `data` itself instead of a copy (writeUnordered). */
  async #writePlain(position: number, data: Uint8Array, inPlace = false): Promise<void> {
    this.#checkOpen();
    const u = this.unitSize;
    const capacity = this.capacity;
    let start = Math.floor(position / u) * u;
    let end = Math.ceil((position + data.byteLength) / u) * u;
    const g = this.grainSize;
    if (g) {
      // Only the first and last grain can be partly covered; widen to a whole grain where it has no data yet.
      const firstGrain = Math.floor(start / g) * g;
      if (firstGrain < start && !(await this.#isAllocated(firstGrain, Math.min(firstGrain + g, capacity)))) start = firstGrain;
      const lastGrainStart = Math.floor((end - 1) / g) * g;
      const lastGrainEnd = Math.min(lastGrainStart + g, capacity);
      if (lastGrainEnd > end && !(await this.#isAllocated(lastGrainStart, lastGrainEnd))) end = lastGrainEnd;
    }
    let buf: Buffer;
    if (start === position && end === position + data.byteLength) {
      // A copy unless the caller gave the buffer up: write()'s caller keeps its plaintext.
      buf = inPlace ? Buffer.from(data.buffer, data.byteOffset, data.byteLength) : Buffer.from(data);
    } else {
      // Read back only what the write does not cover: the head and the tail (partial units, or
      // the rest of a widened grain, which reads as zeros).
      buf = Buffer.allocUnsafe(end - start);
      const dataEnd = position + data.byteLength;
      const headEnd = Math.min(end, Math.ceil(position / u) * u);
      if (position > start) await this.#readPlain(start, buf.subarray(0, headEnd - start));
      const tailStart = Math.max(headEnd, Math.floor(dataEnd / u) * u);
      if (dataEnd < end) await this.#readPlain(tailStart, buf.subarray(tailStart - start));
      buf.set(data, position - start);
    }
    const check = this.#check;
    let next: string | undefined;
    if (check && start === 0) {
      check.current ??= await this.#unitZeroValue(check);
      const value = check.key.value(this.encryption.diskId, u, buf.subarray(0, u));
      if (value !== check.current) {
        // (1) The old value stays committed until unit 0 is durable: a crash at any point leaves a
        // descriptor whose committed or pending slot matches unit 0.
        await this.#storeCheck(check.current, value);
        next = value;
      }
    }
    await this.dataCipher.encrypt(buf, start / u);
    if (check && next !== undefined) {
      try {
        await this.innerDisk.write(start, buf);
        await this.innerDisk.flush(); // (2) unit 0 durable before anything else is written
      } catch (err) {
        // Unit 0 may now be old, new or torn: the next write or commit reads it again, so the
        // descriptor never commits a value unit 0 does not hold.
        check.current = undefined;
        check.commitPending = true;
        throw err;
      }
      check.current = next;
      check.commitPending = true; // (3) on flush() or close()
    } else {
      await this.innerDisk.write(start, buf);
    }
  }

  #checkOpen(): void {
    if (this.#closed) throw new DiskError('ERR_CLOSED', `${this.path} was closed`);
  }

  #checkRange(op: string, position: number, length: number): void {
    this.#checkOpen();
    if (!Number.isSafeInteger(position) || position < 0) {
      throw new DiskError('ERR_INVALID_ARGUMENT', expected('a non-negative integer', 'position', position));
    }
    if (!Number.isSafeInteger(length) || length < 0) {
      throw new DiskError('ERR_INVALID_ARGUMENT', expected('a non-negative integer', 'length', length));
    }
    if (position + length > this.capacity) {
      throw new DiskError('ERR_INVALID_ARGUMENT', `cannot ${op} ${length} bytes at ${position} of ${this.path}: past its capacity of ${this.capacity} bytes`);
    }
  }
}
