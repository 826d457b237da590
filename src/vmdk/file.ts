import { fdatasyncSync, fstatSync, fsyncSync, ftruncateSync } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { VmdkFormatError, ioError } from './errors.js';
import { writeFully } from '../util/file-io.js';
import { inlineIoSettings, inlineMetadataCalls, isMemoryBacked, readInline, writeInline } from '../util/inline-io.js';
import { type DataRange, fileDataRanges } from '../util/file-extents.js';
import { expected } from '../errors.js';

/** Host files a disk keeps open at most (an LRU: the least recently used idle one is closed). */
export const FILE_HANDLES_MAX = 64;
/** The bound for pools made from now on (tests lower it to exercise eviction). */
export const fileHandleSettings = { max: FILE_HANDLES_MAX };

/**
 * The open handles of one disk's host files. A twoGbMaxExtent disk of 16 TiB has 8,193 extent files:
 * keeping every one open would hit the process's descriptor limit, so at most `max` stay open and
 * the least recently used idle one is closed when another must open. The bound is soft: handles with
 * I/O in flight are never closed, so more may be open for as long as that I/O lasts.
 */
export class HandlePool {
  readonly max: number;
  /** Files whose handle is open, least recently used first (Map keeps insertion order). */
  readonly #open = new Map<HostFile, true>();

  constructor(max = fileHandleSettings.max) {
    if (!Number.isSafeInteger(max) || max < 1) throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('an integer >= 1', 'max', max));
    this.max = max;
  }

  /** How many handles are open now. */
  get openCount(): number {
    return this.#open.size;
  }

  /** `file` was used: most recent now. */
  touch(file: HostFile): void {
    this.#open.delete(file);
    this.#open.set(file, true);
  }

  /**
   * Before a handle opens: close least recently used idle handles (their sync and close awaited)
   * until one more fits. Handles in use are skipped, so the bound is exceeded only while they are.
   */
  async reserve(): Promise<void> {
    while (this.#open.size >= this.max) {
      let victim: HostFile | undefined;
      for (const f of this.#open.keys()) {
        if (f.idle) {
          victim = f;
          break;
        }
      }
      if (!victim) return;
      this.#open.delete(victim);
      await victim.closeHandle();
    }
  }

  /** After a burst of concurrent I/O left more than `max` open: close idle ones, least recently used first. */
  trim(): void {
    if (this.#open.size <= this.max) return;
    for (const f of this.#open.keys()) {
      if (this.#open.size <= this.max) break;
      if (!f.idle) continue;
      this.#open.delete(f);
      // Tracked by the file itself (sync() and datasync() wait for it and report its sync failure).
      void f.closeHandle();
    }
  }

  forget(file: HostFile): void {
    this.#open.delete(file);
  }
}

/** The identity of a file (st_dev, st_ino): a reopened path must still name the same file. */
interface FileIdentity {
  dev: bigint;
  ino: bigint;
}

/** How a new host file is made (createDisk's overwrite and memoryBacked options). */
export interface NewFile {
  overwrite: boolean;
  memoryBacked?: boolean | undefined;
}

/**
 * One host file with positional I/O that loops over short reads/writes (one syscall per call in the
 * normal case) and turns OS errors into VmdkFormatError. Several calls may be in flight at once.
 *
 * In a HandlePool the OS handle may be closed while the file stays "open" for its disk: the next call
 * reopens it and checks that the path still names the same file (dev + inode; ERR_VMDK_EXTENT_FILE
 * if it was replaced). A handle with unsynced writes is synced before it is closed; a failure of that
 * sync is reported by the next sync(), which also waits for such closes, so sync() covers every write
 * since the last one whichever handles they went through.
 */
export class HostFile {
  readonly path: string;
  readonly writable: boolean;
  readonly #pool: HandlePool | undefined;
  readonly #identity: FileIdentity | undefined;
  #fh: FileHandle | undefined;
  #reopening: Promise<FileHandle> | undefined;
  /** Calls in flight on the current handle (it is not closed while > 0). */
  #busy = 0;
  /** Written through the current handle since its last sync. */
  #dirty = false;
  /** Closes of evicted handles still running (their sync must finish before sync() returns). */
  readonly #closing = new Set<Promise<void>>();
  #syncError: unknown;
  #closed = false;
  /** Size in bytes as last observed or extended by this process. */
  size: number;
  /** On tmpfs or ramfs: small reads and writes run inline (src/util/inline-io.ts). */
  readonly #memoryBacked: boolean;

  private constructor(
    path: string,
    fh: FileHandle,
    size: number,
    writable: boolean,
    pool: HandlePool | undefined,
    identity: FileIdentity | undefined,
    memoryBacked: boolean,
  ) {
    this.path = path;
    this.#memoryBacked = memoryBacked;
    this.#fh = fh;
    this.size = size;
    this.writable = writable;
    this.#pool = pool;
    this.#identity = identity;
    pool?.touch(this);
  }

  /** Open an existing file; with a `pool`, its handle may be closed and reopened as the pool needs. */
  static async open(path: string, writable: boolean, pool?: HandlePool): Promise<HostFile> {
    await pool?.reserve();
    const fh = await openHandle(path, writable);
    try {
      // Where the file lives first: on tmpfs or ramfs its fstat then runs inline, one thread-pool
      // round trip less per opened file (a batch opens each image's source this way).
      const memoryBacked = await isMemoryBacked(path);
      const st = inlineMetadataCalls(memoryBacked) ? fstatSync(fh.fd, { bigint: true }) : await fh.stat({ bigint: true });
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', 'not a regular file', { file: path });
      }
      return new HostFile(path, fh, Number(st.size), writable, pool, { dev: st.dev, ino: st.ino }, st.isFile() && memoryBacked);
    } catch (err) {
      await fh.close().catch(() => {});
      throw ioError(err, 'stat', path);
    }
  }

  /**
   * Create a new file (fails if it exists unless `how.overwrite`). `how.memoryBacked`: whether its
   * folder is on tmpfs or ramfs, when the caller knows (else a statfs of the new file tells).
   */
  static async create(path: string, how: NewFile): Promise<HostFile> {
    const { overwrite, memoryBacked } = how;
    let fh: FileHandle;
    try {
      fh = await open(path, overwrite ? 'w+' : 'wx+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new VmdkFormatError('ERR_VMDK_EXISTS', 'file already exists (pass overwrite: true to replace it)', { file: path, cause: err });
      }
      throw ioError(err, 'create', path);
    }
    return new HostFile(path, fh, 0, true, undefined, undefined, memoryBacked ?? (await isMemoryBacked(path)));
  }

  /** True when the OS handle is open and no call is using it (the pool may close it). */
  get idle(): boolean {
    return this.#fh !== undefined && this.#busy === 0;
  }

  /** Whether the OS handle is open now (tests). */
  get handleOpen(): boolean {
    return this.#fh !== undefined;
  }

  /** Close the OS handle (HandlePool eviction), syncing first if it was written since its last sync. */
  async closeHandle(): Promise<void> {
    const fh = this.#fh;
    if (!fh || this.#busy > 0) return;
    this.#fh = undefined;
    const dirty = this.#dirty;
    this.#dirty = false;
    const done = (async () => {
      if (dirty) {
        try {
          await fh.sync();
        } catch (err) {
          this.#syncError ??= ioError(err, 'flush to stable storage', this.path);
        }
      }
      await fh.close().catch(() => {});
    })();
    this.#closing.add(done);
    await done;
    this.#closing.delete(done);
  }

  /** Run `fn` on an open handle (reopened and identity-checked if the pool closed it). */
  async #use<T>(fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    this.#busy++;
    try {
      const fh = this.#fh ?? (await this.#reopen());
      this.#pool?.touch(this);
      return await fn(fh);
    } finally {
      this.#busy--;
      if (this.#busy === 0) this.#pool?.trim();
    }
  }

  async #reopen(): Promise<FileHandle> {
    if (this.#closed) throw new VmdkFormatError('ERR_VMDK_CLOSED', 'file is closed', { file: this.path });
    this.#reopening ??= (async () => {
      await this.#pool?.reserve();
      const fh = await openHandle(this.path, this.writable);
      try {
        const st = await fh.stat({ bigint: true }).catch((err: unknown) => {
          throw ioError(err, 'stat', this.path);
        });
        const id = this.#identity;
        if (id && (st.dev !== id.dev || st.ino !== id.ino)) {
          throw new VmdkFormatError(
            'ERR_VMDK_EXTENT_FILE',
            'the file was replaced while the disk was open (another inode now has its name); close the disk and open it again',
            { file: this.path },
          );
        }
      } catch (err) {
        await fh.close().catch(() => {});
        throw err;
      }
      if (this.#closed) {
        // close() ran while this reopen was under way: do not leak the new handle.
        await fh.close().catch(() => {});
        throw new VmdkFormatError('ERR_VMDK_CLOSED', 'file is closed', { file: this.path });
      }
      this.#fh = fh;
      return fh;
    })().finally(() => (this.#reopening = undefined));
    return this.#reopening;
  }

  /**
   * Read up to target.length bytes at pos; returns the number read (less only at end of file). A
   * small read that needs no device (memory-backed file, or all in the page cache) runs inline,
   * without a thread-pool round trip (src/util/inline-io.ts).
   */
  async readAt(target: Uint8Array, pos: number): Promise<number> {
    const fh = this.#fh;
    if (fh !== undefined && target.length <= inlineIoSettings.max) {
      let n: number | undefined;
      try {
        n = readInline(fh.fd, target, pos, this.#memoryBacked);
      } catch (err) {
        throw ioError(err, `read ${target.length} bytes at offset ${pos}`, this.path);
      }
      if (n !== undefined) {
        this.#pool?.touch(this);
        return n;
      }
    }
    return this.#use(async (fh) => {
      let done = 0;
      try {
        while (done < target.length) {
          const { bytesRead } = await fh.read(target, done, target.length - done, pos + done);
          if (bytesRead === 0) break;
          done += bytesRead;
        }
      } catch (err) {
        throw ioError(err, `read ${target.length} bytes at offset ${pos}`, this.path);
      }
      return done;
    });
  }

  /** Read exactly target.length bytes or throw ERR_VMDK_TRUNCATED naming `what`. */
  async readExact(target: Uint8Array, pos: number, what: string): Promise<void> {
    const n = await this.readAt(target, pos);
    if (n !== target.length) {
      throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `file ends inside ${what} (needed ${target.length} bytes at offset ${pos}, file has ${this.size})`, {
        file: this.path,
        offset: pos,
      });
    }
  }

  /** Write all of `data` at pos; small writes to a memory-backed file run inline (src/util/inline-io.ts). */
  async writeAt(data: Uint8Array, pos: number): Promise<void> {
    const fh = this.#fh;
    if (fh !== undefined && this.#memoryBacked && data.length <= inlineIoSettings.max) {
      this.#dirty = true;
      try {
        writeInline(fh.fd, data, pos);
      } catch (err) {
        throw ioError(err, `write ${data.length} bytes at offset ${pos}`, this.path);
      }
      this.#pool?.touch(this);
      if (pos + data.length > this.size) this.size = pos + data.length;
      return;
    }
    await this.#use(async (fh) => {
      this.#dirty = true;
      try {
        await writeFully(fh, data, pos);
      } catch (err) {
        throw ioError(err, `write ${data.length} bytes at offset ${pos}`, this.path);
      }
    });
    if (pos + data.length > this.size) this.size = pos + data.length;
  }

  /** Gathered write of several buffers at pos (one syscall for a grain run with zero padding). */
  async writevAt(buffers: Uint8Array[], pos: number): Promise<void> {
    let total = 0;
    for (const b of buffers) total += b.length;
    const short = await this.#use(async (fh) => {
      this.#dirty = true;
      try {
        const { bytesWritten } = await fh.writev(buffers as NodeJS.ArrayBufferView[], pos);
        return bytesWritten;
      } catch (err) {
        throw ioError(err, `write ${total} bytes at offset ${pos}`, this.path);
      }
    });
    if (short < total) {
      // Rare short gathered write: finish the remainder buffer by buffer.
      let skip = short;
      let at = pos + short;
      for (const b of buffers) {
        if (skip >= b.length) {
          skip -= b.length;
          continue;
        }
        const rest = b.subarray(skip);
        skip = 0;
        await this.writeAt(rest, at);
        at += rest.length;
      }
    }
    if (pos + total > this.size) this.size = pos + total;
  }

  /**
   * The handle, when a size change or sync of this file runs inline — synchronously on the event
   * loop — instead of on libuv's thread pool: the file is memory-backed (tmpfs, ramfs: no device to
   * wait for, an fsync has nothing to write) and inline I/O is on (src/util/inline-io.ts). On tmpfs
   * such a call is a microsecond of kernel work and its pool round trip some 40–80 µs of CPU over
   * two threads; an output image made three of them (its size, fdatasync, fsync).
   */
  #inlineHandle(): FileHandle | undefined {
    const fh = this.#fh;
    return fh !== undefined && inlineMetadataCalls(this.#memoryBacked) && this.#closing.size === 0 ? fh : undefined;
  }

  async truncate(length: number): Promise<void> {
    // Growing only: shrinking a large tmpfs file frees its pages, work in proportion to its size.
    const inline = length >= this.size ? this.#inlineHandle() : undefined;
    if (inline !== undefined) {
      this.#dirty = true;
      try {
        ftruncateSync(inline.fd, length);
      } catch (err) {
        throw ioError(err, `set the size to ${length} bytes`, this.path);
      }
      this.#pool?.touch(this);
      this.size = length;
      return;
    }
    await this.#use(async (fh) => {
      this.#dirty = true;
      try {
        await fh.truncate(length);
      } catch (err) {
        throw ioError(err, `set the size to ${length} bytes`, this.path);
      }
    });
    this.size = length;
  }

  /** Make every write since the last sync durable, including writes through handles closed since. */
  sync(): Promise<void> {
    return this.#flush(false);
  }

  /** The ranges of [start, end) holding data (SEEK_DATA/SEEK_HOLE; see src/util/file-extents.ts). */
  async dataRanges(start: number, end: number, maxRanges: number): Promise<DataRange[]> {
    return this.#use(async (fh) => {
      try {
        return fileDataRanges(fh.fd, start, end, maxRanges);
      } catch (err) {
        throw ioError(err, `find the data ranges of bytes ${start}-${end}`, this.path);
      }
    });
  }

  /**
   * fdatasync: the data written so far (and the size) durable, other metadata such as times not
   * necessarily. Like sync(), it covers writes through handles the pool closed since (they were
   * fsynced before closing; a failure of that is reported here).
   */
  datasync(): Promise<void> {
    return this.#flush(true);
  }

  /** sync() and datasync(): inline on a memory-backed host file, else through the pooled handle. */
  async #flush(dataOnly: boolean): Promise<void> {
    await Promise.all([...this.#closing]);
    const what = dataOnly ? 'flush data to stable storage' : 'flush to stable storage';
    const inline = this.#inlineHandle();
    if (inline !== undefined) {
      this.#dirty = false;
      try {
        if (dataOnly) fdatasyncSync(inline.fd);
        else fsyncSync(inline.fd);
      } catch (err) {
        throw ioError(err, what, this.path);
      }
    } else if (this.#fh) {
      await this.#use(async (fh) => {
        this.#dirty = false;
        try {
          await (dataOnly ? fh.datasync() : fh.sync());
        } catch (err) {
          throw ioError(err, what, this.path);
        }
      });
    }
    const err = this.#syncError;
    this.#syncError = undefined;
    if (err) throw err;
  }

  /** Bytes the file occupies on the host (allocated blocks, not its length). */
  async allocatedBytes(): Promise<number> {
    if (!this.#fh && this.#identity) {
      // Closed by the pool: a stat of the path (same file, checked) spares an open and a close.
      let st;
      try {
        st = await stat(this.path, { bigint: true });
      } catch (err) {
        throw ioError(err, 'stat', this.path);
      }
      if (st.dev === this.#identity.dev && st.ino === this.#identity.ino) return Number(st.blocks) * 512;
    }
    return this.#use(async (fh) => {
      try {
        const st = await fh.stat();
        return st.blocks * 512;
      } catch (err) {
        throw ioError(err, 'stat', this.path);
      }
    });
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#pool?.forget(this);
    const fh = this.#fh;
    this.#fh = undefined;
    await Promise.all([...this.#closing]);
    if (fh) await fh.close().catch(() => {});
  }
}

async function openHandle(path: string, writable: boolean): Promise<FileHandle> {
  try {
    return await open(path, writable ? 'r+' : 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', 'file does not exist', { file: path, cause: err });
    throw ioError(err, writable ? 'open for reading and writing' : 'open for reading', path);
  }
}

/** A FIFO mutex: run critical sections one at a time (grain allocation, table updates). */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn);
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}
