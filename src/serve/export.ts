/**
 * One served disk: the five operations an NBD connection needs (read, write, zero, flush, extents)
 * over an opened disk (plain VirtualDisk or decrypting EncryptedDisk), with the rules that keep an
 * encrypted disk well formed, and the disk's lock. It knows nothing of the wire (connection.ts does).
 *
 * Writes (WRITE, WRITE_ZEROES, TRIM) hold a range lock on the data units they touch, whatever
 * connection sent them: overlapping writes run one after the other in the order they came (a write
 * covering part of a unit is a read-modify-write in src/disk, and two of those on one unit must not
 * interleave), writes to disjoint units of a flat disk run at once. On a sparse disk every write
 * locks the whole disk: grain allocation is serialized in src/disk anyway. Reads run concurrently.
 * A FLUSH syncs every file of the disk after the writes that had completed (src/disk waits for
 * those still running too); since every connection shares this one disk object, a flush on any
 * connection covers the replied writes of all of them (NBD_FLAG_CAN_MULTI_CONN).
 */
import type { EncryptedDisk } from '../disk/index.js';
import type { VirtualDisk } from '../vmdk/index.js';
import type { DiskLock } from '../pipeline/lock.js';
import { trackChanges } from '../backup/index.js';
import { StateFileDisk } from './vars-export.js';
import type { BlockSizes, Extent } from './codec.js';
import { ServeError } from './errors.js';
import { OpGate } from './op-gate.js';
import { RangeLock } from './range-lock.js';
import {
  MAX_PAYLOAD,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
  PREFERRED_BLOCK,
} from './protocol.js';

/** A disk, or a state file served as one (the UEFI variables of a VM: vars-export.ts). */
export type ServedDisk = VirtualDisk | EncryptedDisk | StateFileDisk;

/** What a disk replacement (replaceDisk) switches the export to: the new disk, opened, and its lock. */
export interface Replacement<T> {
  disk: ServedDisk;
  lock: DiskLock;
  result: T;
}

/**
 * What a replacement that must close the old disk before it opens the new one (a live snapshot
 * commit: the chain's shared lock on its parent is in the way) may do besides: replaceDisk's fourth
 * argument.
 */
export interface ReplaceControl {
  /** Hold reads back too (they wait like writes); resolves once those in flight have finished. */
  holdReads(): Promise<void>;
  /** Close the old disk now (after holdReads); its lock stays the export's. replaceDisk does not close it again. */
  closeOld(): Promise<void>;
  /**
   * After closeOld: the disk to serve if change() then throws (the old one opened again), or
   * undefined when none can be opened — every request of the export then fails (EIO) until it is
   * detached or the host restarted. Not called: the export fails the same way.
   */
  fallback(disk: ServedDisk | undefined): void;
}

/** What `exports()` reports for each export (no key material). */
export interface ExportInfo {
  name: string;
  path: string;
  /** Virtual size in bytes. */
  size: number;
  encrypted: boolean;
  readOnly: boolean;
  /** Sparse subformat: holes are reported by BLOCK_STATUS and zeroing them is free. */
  sparse: boolean;
  /** Connections in the transmission phase now. */
  clients: number;
  /** Most connections allowed at once. */
  shared: number;
  bytesRead: number;
  bytesWritten: number;
  /** The disk's key could not be fetched: clients are refused until it is unlocked (locked.ts). */
  locked: boolean;
  /** Why it is locked: "key K of provider P unavailable: CAUSE" (no key material). */
  lockedReason?: string;
}

/** Zeros written per step of WRITE_ZEROES (the payload limit bounds the memory of one request). */
const ZERO_STEP = 1 << 20;
/** At most this many extents in one BLOCK_STATUS reply (the client asks again for the rest). */
const MAX_EXTENTS = 1024;

export class Export {
  readonly name: string;
  readonly readOnly: boolean;
  readonly shared: number;
  #disk: ServedDisk;
  #lock: DiskLock | undefined;
  readonly #description: string | undefined;
  #clients = 0;
  #bytesRead = 0;
  #bytesWritten = 0;
  /** Orders overlapping writes (see the top of this file). */
  readonly #ranges = new RangeLock();
  /** Holds requests back while the disk is replaced. */
  readonly #gate = new OpGate();
  /** The replacement in progress (they run one at a time; close() waits for it). */
  #replacing: Promise<unknown> = Promise.resolve();
  #closed = false;
  /** Why the export has no usable disk (a replacement closed the old one and could open none): requests fail. */
  #broken: Error | undefined;

  constructor(name: string, disk: ServedDisk, options: { readOnly: boolean; shared: number; lock?: DiskLock; description?: string }) {
    this.name = name;
    this.#disk = disk;
    this.readOnly = options.readOnly;
    this.shared = options.shared;
    this.#lock = options.lock;
    this.#description = options.description;
    this.#trackChanges(disk);
  }

  /**
   * Keep the disk's change bitmap (`<disk>.vmseal-ctk`, for incremental backups) while it is served
   * writable: the backup layer's trackChanges marks every write before it reaches the disk and writes
   * the bits clean when the disk is closed in order. A state file has none.
   */
  #trackChanges(disk: ServedDisk): void {
    if (!this.readOnly && !(disk instanceof StateFileDisk)) trackChanges(disk);
  }

  /** NBD_INFO_DESCRIPTION: the one given, else what the disk served now is. */
  get description(): string {
    const disk = this.#disk;
    return this.#description ?? `${disk.encrypted ? 'encrypted ' : ''}${disk.subformat} disk ${disk.path}`;
  }

  /** The disk served now (another one after a replaceDisk). */
  get disk(): ServedDisk {
    return this.#disk;
  }

  get size(): number {
    return this.disk.capacity;
  }

  get sparse(): boolean {
    return this.disk.grainSize !== undefined;
  }

  /** The smallest request the disk serves without read-modify-write: its data unit (1 for a plain disk). */
  get blockSizes(): BlockSizes {
    const minimum = this.disk.encrypted ? this.disk.unitSize : 1;
    return { minimum, preferred: Math.max(minimum, PREFERRED_BLOCK), maximum: MAX_PAYLOAD };
  }

  /**
   * Transmission flags. CAN_MULTI_CONN only when more than one connection is allowed: with
   * `shared` 1, a client that opened extra connections because of it would be refused.
   */
  get transmissionFlags(): number {
    let f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
    if (this.readOnly) f |= NBD_FLAG_READ_ONLY;
    else f |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (this.shared > 1) f |= NBD_FLAG_CAN_MULTI_CONN;
    return f;
  }

  info(): ExportInfo {
    return {
      name: this.name,
      path: this.disk.path,
      size: this.size,
      encrypted: this.disk.encrypted,
      readOnly: this.readOnly,
      sparse: this.sparse,
      clients: this.#clients,
      shared: this.shared,
      bytesRead: this.#bytesRead,
      bytesWritten: this.#bytesWritten,
      locked: false,
    };
  }

  /** Count a connection entering transmission; false when `shared` connections are there already. */
  attachClient(): boolean {
    if (this.#closed || this.#clients >= this.shared) return false;
    this.#clients++;
    return true;
  }

  detachClient(): void {
    this.#clients--;
  }

  async read(offset: number, target: Buffer): Promise<void> {
    await this.#run('read', () => this.disk.readInto(offset, target));
    this.#bytesRead += target.length;
  }

  /**
   * Holes of a sparse disk inside [offset, offset+length) of at least `minimum` bytes (none for a
   * flat disk): a structured read reply sends them as OFFSET_HOLE chunks instead of zeros.
   */
  holes(offset: number, length: number, minimum: number): Promise<Array<{ offset: number; length: number }>> {
    return this.#run('read', () => this.#holes(offset, length, minimum));
  }

  async #holes(offset: number, length: number, minimum: number): Promise<Array<{ offset: number; length: number }>> {
    if (!this.sparse || length === 0) return [];
    const out: Array<{ offset: number; length: number }> = [];
    const end = offset + length;
    let at = offset;
    const hole = (s: number, e: number): void => {
      if (e - s >= minimum) out.push({ offset: s, length: e - s });
    };
    for await (const r of this.disk.allocatedRanges(offset, end)) {
      const s = Math.max(r.offset, offset);
      if (s > at) hole(at, s);
      at = Math.max(at, Math.min(r.offset + r.length, end));
    }
    if (at < end) hole(at, end);
    return out;
  }

  /**
   * Bytes a request allocates on its way through src/disk besides its payload (a WRITE's data, a
   * READ's reply buffer), for the payload budget: an unaligned read decrypts whole units into a
   * second buffer; a write that is not unit-aligned on an encrypted disk, or that may widen to
   * whole grains on a sparse one, assembles its units in a new buffer (an aligned write to a flat
   * encrypted disk is encrypted in place: nothing); WRITE_ZEROES holds one step of zeros plus that.
   */
  scratchBytes(kind: 'read' | 'write' | 'zero', offset: number, length: number): number {
    const disk = this.disk;
    const g = disk.grainSize;
    if (kind === 'zero') return Math.min(ZERO_STEP, length) + this.scratchBytes('write', offset, Math.min(ZERO_STEP, length));
    if (!disk.encrypted) return kind === 'write' && g !== undefined ? 2 * g : 0;
    const u = disk.unitSize;
    const aligned = offset % u === 0 && length % u === 0;
    if (kind === 'read') return aligned ? 0 : length + 2 * u;
    return aligned && g === undefined ? 0 : length + 2 * (g ?? u);
  }

  /**
   * Write, and with `fua` sync before returning. Returns once the data is in the file (page cache
   * at least). `data` is given up: on an encrypted disk it is encrypted in place.
   */
  async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    await this.#run('write', async () => {
      await this.#locked(offset, data.length, () => this.#writeOwned(offset, data));
      if (fua) await this.disk.flush();
    });
    this.#bytesWritten += data.length;
  }

  /**
   * Make [offset, offset+length) read as zeros. On a sparse disk, unless `noHole` asks for
   * allocated zeros, the whole grains of the range that hold data are deallocated first (zeroed-grain
   * entry; never unit 0's grain of an encrypted disk, see EncryptedDisk.deallocate); holes already
   * read as zeros and are left alone. What still holds data after that (partial grains, unit 0's
   * grain, a flat disk) gets zeros written — on an encrypted disk as ciphertext of zeros, since
   * plaintext zeros in the file would decrypt to noise. With `fast`, nothing is written: 'slow'
   * tells the client that zeroing would mean writing (what was deallocated reads as zeros already).
   */
  zero(offset: number, length: number, opts: { fua: boolean; fast: boolean; noHole?: boolean }): Promise<'done' | 'slow'> {
    return this.#run('write', () => this.#zero(offset, length, opts));
  }

  async #zero(offset: number, length: number, opts: { fua: boolean; fast: boolean; noHole?: boolean }): Promise<'done' | 'slow'> {
    // Under the range lock: a write that came before this one may allocate a grain in the range.
    const result = await this.#locked(offset, length, async () => {
      if (this.sparse && !opts.noHole && length > 0) await this.disk.deallocate(offset, length);
      const ranges = await this.#dataRanges(offset, length);
      if (ranges.length === 0) return 'done' as const;
      if (opts.fast) return 'slow' as const;
      const zeros = Buffer.allocUnsafe(Math.min(ZERO_STEP, length));
      for (const r of ranges) {
        for (let at = r.offset; at < r.offset + r.length; at += zeros.length) {
          const n = Math.min(zeros.length, r.offset + r.length - at);
          // Filled each time: an encrypted write leaves ciphertext in it.
          await this.#writeOwned(at, zeros.fill(0, 0, n).subarray(0, n));
        }
      }
      return 'done' as const;
    });
    if (result === 'done') this.#bytesWritten += length;
    if (result === 'done' && opts.fua) await this.disk.flush();
    return result;
  }

  /**
   * TRIM is advisory. On a sparse disk the whole grains of the range are deallocated as by
   * WRITE_ZEROES (they read as zeros afterwards, never as stray ciphertext); partial grains and unit
   * 0's grain of an encrypted disk keep their data. A flat file cannot drop ciphertext without it
   * reading back as noise, so there a trimmed range keeps its data, which the specification allows.
   */
  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.#run('write', async () => {
      if (this.sparse && length > 0) await this.#locked(offset, length, () => this.disk.deallocate(offset, length));
      if (fua) await this.disk.flush();
    });
  }

  /**
   * Sync every file (fsync of each file, through the VMDK layer) after the writes completed so far.
   * It does not change the disk, so it runs while a replacement holds writes back: the writes that
   * completed before it are on the old disk, which the replacement flushed.
   */
  flush(): Promise<void> {
    return this.#run('read', () => this.disk.flush());
  }

  /** base:allocation extents from `offset`: holes of sparse disks are HOLE|ZERO, the rest data. */
  extents(offset: number, length: number, one: boolean): Promise<Extent[]> {
    return this.#run('read', () => this.#extents(offset, length, one));
  }

  async #extents(offset: number, length: number, one: boolean): Promise<Extent[]> {
    const end = offset + length;
    if (!this.sparse) return [{ length, flags: 0 }];
    const out: Extent[] = [];
    let at = offset;
    const limit = one ? 1 : MAX_EXTENTS;
    for await (const r of this.disk.allocatedRanges(offset, end)) {
      const s = Math.max(r.offset, offset);
      const e = Math.min(r.offset + r.length, end);
      if (s > at) out.push({ length: s - at, flags: NBD_STATE_HOLE | NBD_STATE_ZERO });
      if (out.length >= limit) return out;
      if (e > s) out.push({ length: e - s, flags: 0 });
      at = Math.max(at, e);
      if (out.length >= limit) return out;
    }
    if (at < end) out.push({ length: end - at, flags: NBD_STATE_HOLE | NBD_STATE_ZERO });
    return out;
  }

  /**
   * Replace the disk under the export, live (a snapshot's new top, a committed chain's parent): new
   * writes are held back, the writes in flight finish and the disk is flushed — it then holds exactly
   * the writes acknowledged so far, durably — and `change(disk, lock, keepLock, control)` runs while
   * reads go on against the old disk (unless control.holdReads holds them too). When it resolves,
   * the reads in flight finish too, the export switches to the new disk and lock and the old disk is
   * closed (its lock is change's to release or keep); the requests held back then run against the
   * new disk. When it (or the flush) throws, nothing is switched: the requests held back run against
   * the old disk — or, if change closed it (control.closeOld), against its fallback — and the error
   * is rethrown; a change that gave the old lock up and had to take it again hands the new handle to
   * `keepLock` (undefined: the disk is served unlocked). Replacements run one at a time.
   */
  replaceDisk<T>(
    change: (disk: ServedDisk, lock: DiskLock | undefined, keepLock: (lock: DiskLock | undefined) => void, control: ReplaceControl) => Promise<Replacement<T>>,
  ): Promise<T> {
    const run = this.#replacing.then(async () => {
      if (this.#closed) throw new ServeError('ERR_SERVE_CLOSED', `export ${this.name} was closed: the host is stopping or it was detached`);
      if (this.#broken) throw new ServeError('ERR_SERVE_EXPORT', `export ${this.name} has no usable disk (${this.#broken.message}); detach it`);
      const old = this.#disk;
      let closing: Promise<boolean> | undefined;
      // Flushed before and unchanged since: closing writes nothing. A failure here loses no data.
      const closeOld = (): Promise<boolean> =>
        (closing ??= old.close().then(
          () => true,
          () => false,
        ));
      let fallback: ServedDisk | undefined;
      const control: ReplaceControl = {
        holdReads: () => this.#gate.close('read'),
        closeOld: async () => {
          await this.#gate.close('read');
          await closeOld();
        },
        fallback: (disk) => (fallback = disk),
      };
      let next: Replacement<T>;
      try {
        await this.#gate.close('write');
        await old.flush();
        next = await change(old, this.#lock, (lock) => (this.#lock = lock), control);
        await this.#gate.close('read');
      } catch (err) {
        if (closing) this.#switchAfterFailure(fallback, err);
        throw err;
      } finally {
        // Switched (below) before the waiting requests run: they are microtasks queued by open().
        this.#gate.open();
      }
      // Not reached when change() threw.
      this.#disk = next.disk;
      this.#lock = next.lock;
      this.#trackChanges(next.disk);
      // Closing the old disk writes its bits clean (a backup of the frozen layer reads only its
      // changes); a failure leaves the file dirty, which only means that backup reads everything.
      await closeOld();
      return next.result;
    });
    this.#replacing = run.catch(() => undefined);
    return run;
  }

  /** A change that closed the old disk failed: serve its fallback, or fail every request from now on. */
  #switchAfterFailure(fallback: ServedDisk | undefined, err: unknown): void {
    if (fallback) {
      this.#disk = fallback;
      this.#trackChanges(fallback);
      return;
    }
    const why = err instanceof Error ? err.message : String(err);
    this.#broken = new ServeError('ERR_SERVE_EXPORT', `export ${this.name} lost its disk: ${why}`);
  }

  /** Flush (writable exports), close the disk and release its lock. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#replacing;
    if (this.#broken) {
      // Its disk was closed by the failed replacement: only the lock is left to release.
      await this.#lock?.release();
      return;
    }
    let closed = false;
    try {
      if (!this.readOnly) await this.disk.flush();
      // An orderly close writes the change bitmap clean; a failure leaves it dirty: the next backup reads everything.
      await this.disk.close();
      closed = true;
    } finally {
      try {
        if (!closed) await this.disk.close();
      } finally {
        await this.#lock?.release();
      }
    }
  }

  /** Run a request through the gate; a broken export (see ReplaceControl.fallback) fails it. */
  #run<T>(kind: 'read' | 'write', fn: () => Promise<T>): Promise<T> {
    return this.#gate.run(kind, () => {
      if (this.#broken) throw this.#broken;
      return fn();
    });
  }

  /** The parts of a range that hold data (all of it on a flat or raw disk). */
  async #dataRanges(offset: number, length: number): Promise<Array<{ offset: number; length: number }>> {
    if (length === 0) return [];
    if (!this.sparse) return [{ offset, length }];
    const out: Array<{ offset: number; length: number }> = [];
    const end = offset + length;
    for await (const r of this.disk.allocatedRanges(offset, end)) {
      const s = Math.max(r.offset, offset);
      const e = Math.min(r.offset + r.length, end);
      if (e > s) out.push({ offset: s, length: e - s });
    }
    return out;
  }

  /** Run a write holding the range lock on the data units of [offset, offset+length) (the whole disk if sparse). */
  #locked<T>(offset: number, length: number, fn: () => Promise<T>): Promise<T> {
    if (this.sparse) return this.#ranges.run(0, Infinity, fn);
    const u = this.disk.encrypted ? this.disk.unitSize : 1;
    return this.#ranges.run(Math.floor(offset / u), Math.ceil((offset + length) / u), fn);
  }

  /** Write `data`, which the caller gives up (encrypted in place on an encrypted disk). */
  #writeOwned(offset: number, data: Buffer): Promise<void> {
    return this.disk.encrypted ? this.disk.writeUnordered(offset, data) : this.disk.write(offset, data);
  }
}
