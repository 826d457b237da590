import { VmdkFormatError } from './errors.js';
import { deflateGrain } from './grain-zlib.js';
import type { ByteRange, Extent } from './extent.js';
import { type HostFile, Mutex } from './file.js';
import {
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NEWLINE_TEST,
  MARKER_FOOTER,
  MARKER_GD,
  MARKER_GT,
  MAX_SPARSE_FILE_SECTORS,
  SECTOR,
  type SparseHeader,
  gdEntryCount,
  gtSectors,
  metadataMarker,
  serializeSparseHeader,
} from './sparse-header.js';

/** zlib level for streamOptimized grains: 1 (fastest); encrypted data does not compress anyway. */
export const STREAM_DEFLATE_LEVEL = 1;

/**
 * Writes a streamOptimized extent in the canonical order, strictly front to back:
 *
 *   sector 0          header (version 3, flags newline|compressed|markers, gdOffset = GD_AT_END)
 *   sector 1..D       embedded descriptor (NUL padded)
 *   overHead ..       for each grain table in turn: its grains (u64 lba, u32 size, zlib stream, padded to a
 *                     sector), then a GT marker (numSectors, 0, type 1) and the GT
 *   then              GD marker (type 2) + GD, footer marker (type 3) + footer (the header with the real
 *                     gdOffset), end-of-stream marker (a zero sector)
 *
 * Writes must not go back before the grain currently being filled; all-zero grains are not stored
 * (they stay unallocated). Data is compressed on the libuv thread pool, several grains at a time.
 * Memory: one grain being filled, one grain table, the GD (4 bytes per 32 MiB of capacity), and the
 * grains of one write call while they are compressed.
 */
export class StreamWriterExtent implements Extent {
  readonly kind = 'SPARSE';
  readonly writable = true;
  readonly file: HostFile;
  readonly size: number;
  readonly grainBytes: number;
  readonly header: SparseHeader;
  readonly #mutex = new Mutex();
  readonly #gd: Uint32Array;
  readonly #gteCount: number;
  #gt: Uint32Array;
  #gtIndex = 0;
  #gtDirty = false;
  #grainIndex = -1;
  #grain: Buffer;
  #grainDirty = false;
  #writePos: number; // next free sector
  #closed = false;
  readonly #zeros: Buffer;

  private constructor(file: HostFile, header: SparseHeader) {
    this.file = file;
    this.header = header;
    this.size = header.capacity * SECTOR;
    this.grainBytes = header.grainSize * SECTOR;
    this.#gteCount = header.numGTEsPerGT;
    this.#gd = new Uint32Array(gdEntryCount(header));
    this.#gt = new Uint32Array(this.#gteCount);
    this.#grain = Buffer.alloc(this.grainBytes);
    this.#zeros = Buffer.alloc(this.grainBytes);
    this.#writePos = header.overHead;
  }

  /** Create the extent in an empty file: header and descriptor now, the rest as data arrives and on close. */
  static async create(
    file: HostFile,
    capacitySectors: number,
    grainSectors: number,
    descriptor: Uint8Array,
    descriptorSectors: number,
  ): Promise<StreamWriterExtent> {
    const overHead = Math.ceil((1 + descriptorSectors) / grainSectors) * grainSectors;
    const header: SparseHeader = {
      version: 3,
      flags: FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS,
      capacity: capacitySectors,
      grainSize: grainSectors,
      descriptorOffset: 1,
      descriptorSize: descriptorSectors,
      numGTEsPerGT: 512,
      rgdOffset: 0,
      gdOffset: -1,
      overHead,
      uncleanShutdown: 0,
      compressAlgorithm: 1,
    };
    const ext = new StreamWriterExtent(file, header);
    const head = Buffer.alloc((1 + descriptorSectors) * SECTOR);
    serializeSparseHeader(header).copy(head, 0);
    head.set(descriptor, SECTOR);
    await file.writeAt(head, 0);
    await file.truncate(overHead * SECTOR);
    return ext;
  }

  get descriptorArea(): { offset: number; size: number } {
    return { offset: this.header.descriptorOffset * SECTOR, size: this.header.descriptorSize * SECTOR };
  }

  async writeDescriptorArea(bytes: Uint8Array): Promise<void> {
    const area = this.descriptorArea;
    const buf = Buffer.alloc(area.size);
    buf.set(bytes);
    await this.#mutex.run(async () => {
      await this.file.writeAt(buf, area.offset);
      await this.file.sync();
    });
  }

  async readInto(): Promise<void> {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'a streamOptimized disk being created cannot be read until it is closed and opened again', {
      file: this.file.path,
    });
  }

  // eslint-disable-next-line require-yield
  async *allocated(): AsyncIterable<ByteRange> {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'a streamOptimized disk being created has no allocation map until it is closed and opened again', {
      file: this.file.path,
    });
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    await this.#mutex.run(() => this.#write(offset, data));
  }

  async #write(offset: number, data: Uint8Array): Promise<void> {
    if (this.#closed) throw new VmdkFormatError('ERR_VMDK_CLOSED', 'disk is closed', { file: this.file.path });
    const gb = this.grainBytes;
    const current = this.#grainIndex < 0 ? 0 : this.#grainIndex * gb;
    if (offset < current) {
      throw new VmdkFormatError(
        'ERR_VMDK_WRITE_ORDER',
        `streamOptimized disks are written front to back: write at ${offset} is before the grain being written (${current})`,
        { file: this.file.path },
      );
    }
    const done: Array<{ index: number; data: Uint8Array }> = [];
    let pos = offset;
    let t = 0;
    while (t < data.length) {
      const g = Math.floor(pos / gb);
      const inGrain = pos - g * gb;
      const len = Math.min(gb - inGrain, data.length - t);
      if (g !== this.#grainIndex) {
        if (this.#grainDirty) done.push({ index: this.#grainIndex, data: Buffer.from(this.#grain) });
        this.#grainDirty = false;
        this.#grainIndex = g;
      }
      if (len === gb) {
        // A whole grain in this write: use the caller's bytes (compressed before write() resolves).
        this.#grainDirty = false;
        done.push({ index: g, data: data.subarray(t, t + len) });
        this.#grainIndex = g + 1;
      } else {
        if (!this.#grainDirty) this.#grain.fill(0);
        this.#grain.set(data.subarray(t, t + len), inGrain);
        this.#grainDirty = true;
      }
      pos += len;
      t += len;
    }
    await this.#emit(done);
  }

  /** Compress finished grains (in parallel) and append them, with GTs as each table is completed. */
  async #emit(grains: Array<{ index: number; data: Uint8Array }>): Promise<void> {
    const stored = grains.filter((g) => !isZero(g.data, this.#zeros));
    const compressed = await Promise.all(stored.map((g) => deflateGrain(g.data, STREAM_DEFLATE_LEVEL)));
    const parts: Buffer[] = [];
    let partsStart = this.#writePos;
    const flushParts = async () => {
      if (parts.length) await this.file.writevAt(parts.splice(0), partsStart * SECTOR);
      partsStart = this.#writePos;
    };
    for (let i = 0; i < stored.length; i++) {
      const g = stored[i].index;
      const gti = Math.floor(g / this.#gteCount);
      if (gti !== this.#gtIndex) {
        await flushParts();
        await this.#finishTable();
        this.#gtIndex = gti;
        partsStart = this.#writePos;
      }
      const z = compressed[i];
      const sectors = Math.ceil((12 + z.length) / SECTOR);
      if (this.#writePos + sectors + gtSectors(this.header) + 1 > MAX_SPARSE_FILE_SECTORS) {
        throw new VmdkFormatError('ERR_VMDK_LIMIT', 'streamOptimized file would grow past 2 TiB (32-bit sector numbers)', { file: this.file.path });
      }
      const head = Buffer.alloc(12);
      head.writeBigUInt64LE(BigInt(g) * BigInt(this.header.grainSize), 0);
      head.writeUInt32LE(z.length, 8);
      parts.push(head, z);
      const pad = sectors * SECTOR - 12 - z.length;
      if (pad) parts.push(this.#zeros.subarray(0, pad));
      this.#gt[g - gti * this.#gteCount] = this.#writePos;
      this.#gtDirty = true;
      this.#writePos += sectors;
      if (parts.length >= 600) await flushParts();
    }
    await flushParts();
  }

  /** Append the current grain table (marker + table) if it holds any grain, and note it in the GD. */
  async #finishTable(): Promise<void> {
    if (!this.#gtDirty) return;
    const sec = gtSectors(this.header);
    const buf = Buffer.alloc((1 + sec) * SECTOR);
    metadataMarker(sec, MARKER_GT).copy(buf, 0);
    for (let i = 0; i < this.#gt.length; i++) buf.writeUInt32LE(this.#gt[i], SECTOR + i * 4);
    await this.file.writeAt(buf, this.#writePos * SECTOR);
    this.#gd[this.#gtIndex] = this.#writePos + 1;
    this.#writePos += 1 + sec;
    this.#gt.fill(0);
    this.#gtDirty = false;
  }

  async flush(): Promise<void> {
    await this.#mutex.run(() => this.file.sync());
  }

  /** Finish the stream: last grain, last GT, GD, footer, end-of-stream marker. */
  async close(): Promise<void> {
    await this.#mutex.run(async () => {
      if (this.#closed) return;
      this.#closed = true;
      if (this.#grainDirty) {
        this.#grainDirty = false;
        await this.#emit([{ index: this.#grainIndex, data: this.#grain }]);
      }
      await this.#finishTable();
      const gdSec = Math.ceil((this.#gd.length * 4) / SECTOR);
      const gdAt = this.#writePos + 1;
      const tail = Buffer.alloc((1 + gdSec + 1 + 1 + 1) * SECTOR);
      metadataMarker(gdSec, MARKER_GD).copy(tail, 0);
      for (let i = 0; i < this.#gd.length; i++) tail.writeUInt32LE(this.#gd[i], SECTOR + i * 4);
      let at = (1 + gdSec) * SECTOR;
      metadataMarker(1, MARKER_FOOTER).copy(tail, at);
      serializeSparseHeader({ ...this.header, gdOffset: gdAt }).copy(tail, at + SECTOR);
      // The last sector stays zero: the end-of-stream marker.
      await this.file.writeAt(tail, this.#writePos * SECTOR);
      this.#writePos += tail.length / SECTOR;
      at = this.#writePos * SECTOR;
      if (this.file.size > at) await this.file.truncate(at);
      await this.file.sync();
    });
  }
}

function isZero(data: Uint8Array, zeros: Buffer): boolean {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).equals(zeros.subarray(0, data.byteLength));
}
