import { VmdkFormatError } from './errors.js';
import type { HostFile } from './file.js';

/** A byte range [start, end) inside an extent or a disk. */
export interface ByteRange {
  start: number;
  end: number;
}

/**
 * One extent of a disk, addressed in bytes from the extent's start. Implementations: FlatExtent (FLAT,
 * VMFS, raw images), ZeroExtent, SparseExtent (hosted sparse and streamOptimized reading),
 * StreamWriterExtent (streamOptimized writing), GrainMapExtent (vmfsSparse and seSparse, read only).
 */
export interface Extent {
  readonly kind: 'FLAT' | 'VMFS' | 'ZERO' | 'SPARSE' | 'VMFSSPARSE' | 'SESPARSE';
  /** Size in bytes. */
  readonly size: number;
  readonly writable: boolean;
  /** Grain size in bytes for sparse extents. */
  readonly grainBytes: number | undefined;
  readonly file: HostFile | undefined;
  readInto(offset: number, target: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Data-backed ranges inside [start, end), in order (not necessarily coalesced). */
  allocated(start: number, end: number): AsyncIterable<ByteRange>;
  /** Sparse extents: the unallocated ranges inside [start, end) (read from the parent in a snapshot child), in order. */
  holes?(start: number, end: number): AsyncIterable<ByteRange>;
  /** Sparse extents: make the whole grains in [start, end) read as zeros without data (see SparseExtent). */
  zeroGrains?(start: number, end: number, holeReadsZero: boolean): Promise<ByteRange[]>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export function readOnlyError(what: string, file: string | undefined): VmdkFormatError {
  return new VmdkFormatError('ERR_VMDK_READ_ONLY', `cannot write: ${what}`, { file });
}

/** FLAT / VMFS extent (and raw images): the extent's bytes sit in `file` from `base` on. */
export class FlatExtent implements Extent {
  readonly kind: 'FLAT' | 'VMFS';
  readonly size: number;
  readonly writable: boolean;
  readonly grainBytes = undefined;
  readonly file: HostFile;
  readonly #base: number;
  readonly #why: string;

  constructor(file: HostFile, base: number, size: number, writable: boolean, kind: 'FLAT' | 'VMFS' = 'FLAT', whyReadOnly = 'the disk was opened read-only') {
    this.file = file;
    this.#base = base;
    this.size = size;
    this.writable = writable;
    this.kind = kind;
    this.#why = whyReadOnly;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    const n = await this.file.readAt(target, this.#base + offset);
    if (n !== target.length) {
      throw new VmdkFormatError(
        'ERR_VMDK_TRUNCATED',
        `flat extent file ends before the extent does (read ${target.length} bytes at offset ${this.#base + offset}, got ${n})`,
        { file: this.file.path, offset: this.#base + offset + n },
      );
    }
  }

  async write(offset: number, data: Uint8Array): Promise<void> {
    if (!this.writable) throw readOnlyError(this.#why, this.file.path);
    await this.file.writeAt(data, this.#base + offset);
  }

  async *allocated(start: number, end: number): AsyncIterable<ByteRange> {
    if (end > start) yield { start, end };
  }

  async flush(): Promise<void> {
    if (this.writable) await this.file.sync();
  }

  async close(): Promise<void> {}
}

/** ZERO extent: reads zeros, holds no data, refuses writes. */
export class ZeroExtent implements Extent {
  readonly kind = 'ZERO';
  readonly size: number;
  readonly writable = false;
  readonly grainBytes = undefined;
  readonly file = undefined;

  constructor(size: number) {
    this.size = size;
  }

  async readInto(_offset: number, target: Uint8Array): Promise<void> {
    target.fill(0);
  }

  async write(): Promise<void> {
    throw readOnlyError('a ZERO extent holds no data', undefined);
  }

  async *allocated(): AsyncIterable<ByteRange> {}

  async flush(): Promise<void> {}

  async close(): Promise<void> {}
}
