import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { writeFileAtomic } from '../util/atomic-file.js';
import { Descriptor, MAX_DESCRIPTOR_BYTES } from './descriptor.js';
import { VmdkFormatError, ioError } from './errors.js';
import type { ByteRange, Extent } from './extent.js';
import { type HostFile, Mutex } from './file.js';
import { expected } from '../errors.js';

export interface AllocatedRange {
  /** Byte offset in the virtual disk. */
  offset: number;
  /** Length in bytes. */
  length: number;
}

/** The part of a disk that can rewrite an embedded descriptor in place. */
export interface EmbeddedDescriptorHost {
  readonly descriptorArea: { offset: number; size: number } | undefined;
  writeDescriptorArea(bytes: Uint8Array): Promise<void>;
}

/** Extents flushed at once by flush() (each may reopen its file and sync it). */
const FLUSH_PARALLEL = 4;

/** Largest read() (one Buffer) accepted; readInto() has no limit since the caller owns the memory. */
export const MAX_READ_BYTES = 256 << 20;

/**
 * A virtual disk: bytes 0..capacity of the guest's view, whatever extents and files hold them.
 * Implemented by VmdkDisk for both VMDK (any supported subformat) and raw images.
 */
export interface VirtualDisk {
  /** Discriminant against src/disk's EncryptedDisk: a VirtualDisk gives its stored bytes as they are. */
  readonly encrypted: false;
  readonly path: string;
  readonly capacity: number;
  readonly format: 'vmdk' | 'raw';
  readonly subformat: string;
  readonly descriptor: Descriptor | undefined;
  readonly readOnly: boolean;
  readonly grainSize: number | undefined;
  read(position: number, length: number): Promise<Buffer>;
  readInto(position: number, target: Uint8Array): Promise<void>;
  write(position: number, data: Uint8Array): Promise<void>;
  allocatedRanges(start?: number, end?: number): AsyncIterable<AllocatedRange>;
  /**
   * Deallocate the whole sparse grains inside [position, position+length) so they read as zeros
   * (zeroed-grain entry, or a hole in a disk without a parent). Returns the ranges deallocated; the
   * rest of the range is left as it was (flat extents, partial grains), for the caller to write.
   */
  deallocate(position: number, length: number): Promise<AllocatedRange[]>;
  allocatedBytes(): Promise<number>;
  files(): string[];
  updateDescriptor(edit: (d: Descriptor) => unknown): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** `await using disk = await openDisk(…)` closes the disk at the end of the block. */
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * What watches a disk's changes (the backup layer's change tracking, src/backup/change-bitmap.ts):
 * told before every change of the disk's content or descriptor, so that it can record the change
 * durably before it happens, and once the disk is closed, before the lock its opener took is released
 * (nobody else can have written the files in between).
 */
export interface ChangeWatcher {
  /** Before [position, position+length) changes (length 0: the descriptor only). The change waits for it; a rejection fails it. */
  beforeChange(position: number, length: number): Promise<void>;
  /** After an orderly close (every file closed without error), before the opener's lock is released. Must not reject. */
  afterClose(): Promise<void>;
}

export interface VmdkDiskInit {
  path: string;
  format: 'vmdk' | 'raw';
  subformat: string;
  descriptor: Descriptor | undefined;
  /** How the descriptor is stored: a text file (at `path`), embedded in a sparse extent, or nowhere (raw, bare extent). */
  descriptorStore: { kind: 'text' } | { kind: 'embedded'; host: EmbeddedDescriptorHost } | { kind: 'none'; why: string };
  readOnly: boolean;
  extents: Extent[];
  hostFiles: HostFile[];
}

/**
 * A random content id: 8 lowercase hex digits (fixed width, so an embedded descriptor keeps its
 * length and the rewrite is one sector), never `ffffffff` (no parent) or `fffffffe` (the id vmseal
 * gives a bare extent), and never the id it replaces.
 */
export function newCid(old: string | undefined): string {
  for (;;) {
    const cid = randomBytes(4).toString('hex');
    if (cid !== 'ffffffff' && cid !== 'fffffffe' && cid !== old?.toLowerCase()) return cid;
  }
}

function checkInteger(value: unknown, name: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a non-negative safe integer', name, value));
  }
}

export class VmdkDisk implements VirtualDisk {
  readonly encrypted = false as const;
  readonly path: string;
  readonly capacity: number;
  readonly format: 'vmdk' | 'raw';
  readonly subformat: string;
  readonly readOnly: boolean;
  readonly grainSize: number | undefined;
  #descriptor: Descriptor | undefined;
  readonly #store: VmdkDiskInit['descriptorStore'];
  readonly #extents: Extent[];
  readonly #starts: number[];
  readonly #hostFiles: HostFile[];
  readonly #descriptorMutex = new Mutex();
  /** Reads and writes in flight: close() waits for them before it closes the files. */
  readonly #inFlight = new Set<Promise<unknown>>();
  #closed = false;
  #cidUpdated = false;
  #cidUpdate: Promise<void> | undefined;
  #watcher: ChangeWatcher | undefined;
  /** Released when the disk closes: the lock openDisk took for a writer (src/vmdk/open.ts). */
  readonly #onClose: Array<() => void> = [];

  constructor(init: VmdkDiskInit) {
    this.path = init.path;
    this.format = init.format;
    this.subformat = init.subformat;
    this.#descriptor = init.descriptor;
    this.#store = init.descriptorStore;
    this.readOnly = init.readOnly;
    this.#extents = init.extents;
    this.#hostFiles = init.hostFiles;
    this.#starts = [];
    let at = 0;
    for (const e of init.extents) {
      this.#starts.push(at);
      at += e.size;
    }
    this.capacity = at;
    this.grainSize = init.extents.find((e) => e.grainBytes !== undefined)?.grainBytes;
  }

  get descriptor(): Descriptor | undefined {
    return this.#descriptor;
  }

  #checkOpen(): void {
    if (this.#closed) throw new VmdkFormatError('ERR_VMDK_CLOSED', 'disk is closed', { file: this.path });
  }

  #checkRange(position: number, length: number, what: string): void {
    checkInteger(position, 'position');
    if (position + length > this.capacity) {
      throw new VmdkFormatError('ERR_VMDK_RANGE', `${what} of ${length} bytes at position ${position} goes past the capacity of ${this.capacity} bytes`, {
        file: this.path,
      });
    }
  }

  /** Index of the extent holding byte `position` (position < capacity). */
  #extentAt(position: number): number {
    let lo = 0;
    let hi = this.#starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.#starts[mid] <= position) lo = mid;
      else hi = mid - 1;
    }
    // Skip zero-size extents.
    while (lo < this.#extents.length - 1 && this.#starts[lo] + this.#extents[lo].size <= position) lo++;
    return lo;
  }

  async read(position: number, length: number): Promise<Buffer> {
    checkInteger(length, 'length');
    if (length > MAX_READ_BYTES) {
      throw new VmdkFormatError(
        'ERR_INVALID_ARGUMENT',
        `${expected(`a length of at most ${MAX_READ_BYTES} bytes`, 'length', length)}; use readInto() with your own buffer for more`,
      );
    }
    const buf = Buffer.allocUnsafe(length);
    await this.readInto(position, buf);
    return buf;
  }

  async readInto(position: number, target: Uint8Array): Promise<void> {
    this.#checkOpen();
    if (!(target instanceof Uint8Array)) throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a Uint8Array', 'target', target));
    this.#checkRange(position, target.length, 'read');
    if (target.length === 0) return;
    const jobs: Array<Promise<void>> = [];
    let i = this.#extentAt(position);
    let pos = position;
    let t = 0;
    while (t < target.length) {
      const ext = this.#extents[i];
      const inExt = pos - this.#starts[i];
      const len = Math.min(ext.size - inExt, target.length - t);
      if (len > 0) jobs.push(ext.readInto(inExt, target.subarray(t, t + len)));
      pos += len;
      t += len;
      i++;
    }
    await this.#track(Promise.all(jobs));
  }

  async #track<T>(p: Promise<T>): Promise<T> {
    this.#inFlight.add(p);
    try {
      return await p;
    } finally {
      this.#inFlight.delete(p);
    }
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    this.#checkOpen();
    if (!(data instanceof Uint8Array)) throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a Uint8Array', 'data', data));
    if (this.readOnly) throw new VmdkFormatError('ERR_VMDK_READ_ONLY', 'cannot write: the disk was opened read-only', { file: this.path });
    this.#checkRange(position, data.length, 'write');
    if (data.length === 0) return;
    // Tracked from here on, the CID update included: close() waits for it all.
    await this.#track(this.#beforeChange(position, data.length).then(() => this.#writeExtents(position, data)));
  }

  async #writeExtents(position: number, data: Uint8Array): Promise<void> {
    const jobs: Array<Promise<void>> = [];
    let i = this.#extentAt(position);
    let pos = position;
    let t = 0;
    while (t < data.length) {
      const ext = this.#extents[i];
      const inExt = pos - this.#starts[i];
      const len = Math.min(ext.size - inExt, data.length - t);
      if (len > 0) jobs.push(ext.write(inExt, data.subarray(t, t + len)));
      pos += len;
      t += len;
      i++;
    }
    await Promise.all(jobs);
  }

  async *allocatedRanges(start = 0, end = this.capacity): AsyncIterable<AllocatedRange> {
    this.#checkOpen();
    checkInteger(start, 'start');
    checkInteger(end, 'end');
    if (end > this.capacity || start > end) {
      throw new VmdkFormatError('ERR_VMDK_RANGE', `allocatedRanges(${start}, ${end}) is not inside 0..${this.capacity}`, { file: this.path });
    }
    if (start === end) return;
    yield* this.#mergedRuns(start, end, (ext, a, b) => ext.allocated(a, b));
  }

  /**
   * The ranges inside [start, end) that this layer does not hold (unallocated sparse grains): in a
   * snapshot child they read from the parent (src/vmdk/chain.ts). Flat and ZERO extents have none.
   */
  async *holeRanges(start: number, end: number): AsyncIterable<AllocatedRange> {
    this.#checkOpen();
    yield* this.#mergedRuns(start, end, (ext, a, b) => ext.holes?.(a, b));
  }

  /**
   * The ranges `pick` gives for each extent inside [start, end) (extent-relative, an extent giving
   * none is skipped), as disk offsets, with runs that touch across extents merged into one.
   */
  async *#mergedRuns(
    start: number,
    end: number,
    pick: (ext: Extent, a: number, b: number) => AsyncIterable<ByteRange> | undefined,
  ): AsyncIterable<AllocatedRange> {
    let runStart = -1;
    let runEnd = -1;
    for (let i = this.#extentAt(start); i < this.#extents.length && this.#starts[i] < end; i++) {
      const base = this.#starts[i];
      const ext = this.#extents[i];
      const a = Math.max(start, base) - base;
      const b = Math.min(end, base + ext.size) - base;
      if (b <= a) continue;
      const ranges = pick(ext, a, b);
      if (!ranges) continue;
      for await (const r of ranges) {
        const s = base + r.start;
        const e = base + r.end;
        if (s === runEnd) runEnd = e;
        else {
          if (runEnd > runStart) yield { offset: runStart, length: runEnd - runStart };
          runStart = s;
          runEnd = e;
        }
      }
    }
    if (runEnd > runStart) yield { offset: runStart, length: runEnd - runStart };
  }

  async deallocate(position: number, length: number): Promise<AllocatedRange[]> {
    this.#checkOpen();
    if (this.readOnly) throw new VmdkFormatError('ERR_VMDK_READ_ONLY', 'cannot deallocate: the disk was opened read-only', { file: this.path });
    checkInteger(length, 'length');
    this.#checkRange(position, length, 'deallocate');
    const out: AllocatedRange[] = [];
    if (length === 0) return out;
    // Only a range with sparse extents can change; a flat one is left as it is (the watcher need not mark it).
    await this.#track(this.#canDeallocate(position, position + length) ? this.#beforeChange(position, length) : this.#newCidOnce());
    // A hole in a snapshot child reads the parent's data, not zeros: in a child only zeroed-grain
    // entries deallocate (src/vmdk/chain.ts).
    const parent = this.#descriptor?.get('parentCID');
    const holeReadsZero = (parent === undefined || parent.toLowerCase() === 'ffffffff') && !this.#descriptor?.has('parentFileNameHint');
    const end = position + length;
    for (let i = this.#extentAt(position); i < this.#extents.length && this.#starts[i] < end; i++) {
      const ext = this.#extents[i];
      const base = this.#starts[i];
      const a = Math.max(position, base) - base;
      const b = Math.min(end, base + ext.size) - base;
      if (b <= a || !ext.zeroGrains) continue;
      for (const r of await this.#track(ext.zeroGrains(a, b, holeReadsZero))) {
        const prev = out[out.length - 1];
        if (prev && prev.offset + prev.length === base + r.start) prev.length += r.end - r.start;
        else out.push({ offset: base + r.start, length: r.end - r.start });
      }
    }
    return out;
  }

  /** Whether [start, end) touches an extent whose grains can be deallocated. */
  #canDeallocate(start: number, end: number): boolean {
    for (let i = this.#extentAt(start); i < this.#extents.length && this.#starts[i] < end; i++) if (this.#extents[i].zeroGrains) return true;
    return false;
  }

  /**
   * @internal Watch this disk's changes (see ChangeWatcher): the backup layer's trackChanges. One
   * watcher per disk, kept until it is closed; false when it has one already.
   */
  watchChanges(watcher: ChangeWatcher): boolean {
    this.#checkOpen();
    if (this.#watcher) return false;
    this.#watcher = watcher;
    return true;
  }

  /** Before a change of content: the watcher first (it must see the disk as it was: its CID too), then the new CID. */
  #beforeChange(position: number, length: number): Promise<void> {
    const w = this.#watcher;
    return w ? w.beforeChange(position, length).then(() => this.#newCidOnce()) : this.#newCidOnce();
  }

  /**
   * Draw a new CID before the first change of content after opening, as qemu and VMware do, so that
   * a child whose parentCID names the old one sees that its parent changed (src/vmdk/chain.ts). The
   * descriptor is stored durably (updateDescriptor) before the change it announces is acknowledged;
   * a crash between the two leaves a new CID over unchanged data, which is harmless. Disks without a
   * stored descriptor (raw images, bare extents) have no CID. Concurrent first writes wait for the
   * one update; a failed update is retried by the next write.
   */
  /**
   * The CID was drawn by this process for a disk it just created (createDisk): nobody can have made
   * a child on it, so the first write needs no new one (and a restored or copied descriptor keeps
   * the CID it was given).
   */
  markCidFresh(): void {
    this.#cidUpdated = true;
  }

  #newCidOnce(): Promise<void> {
    if (this.#cidUpdated || this.#store.kind === 'none' || !this.#descriptor) return Promise.resolve();
    this.#cidUpdate ??= this.updateDescriptor((d) => d.set('CID', newCid(d.get('CID')))).then(
      () => {
        this.#cidUpdated = true;
      },
      (err: unknown) => {
        this.#cidUpdate = undefined;
        throw err;
      },
    );
    return this.#cidUpdate;
  }

  async allocatedBytes(): Promise<number> {
    this.#checkOpen();
    let total = 0;
    for (const f of this.#hostFiles) total += await f.allocatedBytes();
    if (this.#store.kind === 'text') {
      try {
        const fh = await open(this.path, 'r');
        try {
          total += (await fh.stat()).blocks * 512;
        } finally {
          await fh.close();
        }
      } catch (err) {
        throw ioError(err, 'stat', this.path);
      }
    }
    return total;
  }

  files(): string[] {
    const out = [this.path];
    for (const f of this.#hostFiles) if (!out.includes(f.path)) out.push(f.path);
    return out;
  }

  /**
   * Edit the descriptor and store it durably. `edit` receives a copy; it must not change the extent
   * lines or createType. A text descriptor is replaced atomically (temp file, fsync, rename, fsync of the
   * folder); an embedded one is rewritten in place and must fit its area (ERR_VMDK_DESCRIPTOR_FULL).
   */
  async updateDescriptor(edit: (d: Descriptor) => unknown): Promise<void> {
    this.#checkOpen();
    if (typeof edit !== 'function') throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a function', 'edit', edit));
    const store = this.#store;
    if (store.kind === 'none' || !this.#descriptor) {
      throw new VmdkFormatError('ERR_VMDK_DESCRIPTOR_FULL', `cannot update the descriptor: ${store.kind === 'none' ? store.why : 'no descriptor'}`, {
        file: this.path,
      });
    }
    if (this.readOnly) throw new VmdkFormatError('ERR_VMDK_READ_ONLY', 'cannot update the descriptor: the disk was opened read-only', { file: this.path });
    await this.#watcher?.beforeChange(0, 0);
    await this.#descriptorMutex.run(async () => {
      const before = this.#descriptor!;
      const copy = before.clone();
      await edit(copy);
      if (copy.extentText() !== before.extentText() || copy.createType !== before.createType) {
        throw new VmdkFormatError('ERR_INVALID_ARGUMENT', 'updateDescriptor must not change the extent lines or createType', { file: this.path });
      }
      const bytes = copy.toBuffer();
      if (bytes.length > MAX_DESCRIPTOR_BYTES) {
        throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptor would be ${bytes.length} bytes, beyond the limit of ${MAX_DESCRIPTOR_BYTES}`, {
          file: this.path,
        });
      }
      if (store.kind === 'text') {
        await writeFileAtomic(this.path, bytes, 'keep').catch((err: unknown) => {
          throw ioError(err, 'replace the descriptor file', this.path);
        });
      } else {
        const area = store.host.descriptorArea!;
        // Keep at least one NUL so readers that look for the terminator find it.
        if (bytes.length >= area.size) {
          throw new VmdkFormatError(
            'ERR_VMDK_DESCRIPTOR_FULL',
            `descriptor of ${bytes.length} bytes no longer fits the ${area.size}-byte embedded descriptor area`,
            { file: this.path, offset: area.offset },
          );
        }
        await store.host.writeDescriptorArea(bytes);
      }
      this.#descriptor = Descriptor.parse(bytes, { file: this.path });
    });
  }

  async flush(): Promise<void> {
    this.#checkOpen();
    // A few extents at a time: each may reopen its file, and a disk of 8,193 extent files must not
    // open them all at once (the handle pool's bound, src/vmdk/file.ts).
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < this.#extents.length) await this.#extents[next++].flush();
    };
    await Promise.all(Array.from({ length: Math.min(FLUSH_PARALLEL, this.#extents.length) }, worker));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  /** Run `release` once the disk is closed (after its last write and flush): openDisk's lock of a writer. */
  holdUntilClose(release: () => void): void {
    this.#onClose.push(release);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await Promise.allSettled([...this.#inFlight]);
    let first: unknown;
    try {
      for (const e of this.#extents) {
        try {
          await e.close();
        } catch (err) {
          first ??= err;
        }
      }
      for (const f of this.#hostFiles) await f.close();
      // Still under the opener's lock: the files' state the watcher records is this writer's last.
      if (first === undefined) await this.#watcher?.afterClose();
    } finally {
      for (const release of this.#onClose.splice(0)) release();
    }
    if (first) throw first;
  }
}
