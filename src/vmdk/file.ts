import { open, type FileHandle } from 'node:fs/promises';
import { VmdkFormatError, ioError } from './errors.js';
import { writeFully } from '../util/file-io.js';

/**
 * One open host file with positional I/O that loops over short reads/writes (one syscall per call in
 * the normal case) and turns OS errors into VmdkFormatError. Several calls may be in flight at once.
 */
export class HostFile {
  readonly path: string;
  readonly writable: boolean;
  #fh: FileHandle;
  /** Size in bytes as last observed or extended by this process. */
  size: number;

  private constructor(path: string, fh: FileHandle, size: number, writable: boolean) {
    this.path = path;
    this.#fh = fh;
    this.size = size;
    this.writable = writable;
  }

  static async open(path: string, writable: boolean): Promise<HostFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, writable ? 'r+' : 'r');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', 'file does not exist', { file: path, cause: err });
      throw ioError(err, writable ? 'open for reading and writing' : 'open for reading', path);
    }
    try {
      const st = await fh.stat();
      if (!st.isFile() && !st.isBlockDevice()) {
        throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', 'not a regular file', { file: path });
      }
      return new HostFile(path, fh, st.size, writable);
    } catch (err) {
      await fh.close().catch(() => {});
      throw ioError(err, 'stat', path);
    }
  }

  /** Create a new file (fails if it exists unless `overwrite`). */
  static async create(path: string, overwrite: boolean): Promise<HostFile> {
    let fh: FileHandle;
    try {
      fh = await open(path, overwrite ? 'w+' : 'wx+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new VmdkFormatError('ERR_VMDK_EXISTS', 'file already exists (pass overwrite: true to replace it)', { file: path, cause: err });
      }
      throw ioError(err, 'create', path);
    }
    return new HostFile(path, fh, 0, true);
  }

  /** Read up to target.length bytes at pos; returns the number read (less only at end of file). */
  async readAt(target: Uint8Array, pos: number): Promise<number> {
    let done = 0;
    try {
      while (done < target.length) {
        const { bytesRead } = await this.#fh.read(target, done, target.length - done, pos + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
    } catch (err) {
      throw ioError(err, `read ${target.length} bytes at offset ${pos}`, this.path);
    }
    return done;
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

  async writeAt(data: Uint8Array, pos: number): Promise<void> {
    try {
      await writeFully(this.#fh, data, pos);
    } catch (err) {
      throw ioError(err, `write ${data.length} bytes at offset ${pos}`, this.path);
    }
    if (pos + data.length > this.size) this.size = pos + data.length;
  }

  /** Gathered write of several buffers at pos (one syscall for a grain run with zero padding). */
  async writevAt(buffers: Uint8Array[], pos: number): Promise<void> {
    let total = 0;
    for (const b of buffers) total += b.length;
    try {
      let { bytesWritten } = await this.#fh.writev(buffers as NodeJS.ArrayBufferView[], pos);
      if (bytesWritten < total) {
        // Rare short gathered write: finish the remainder buffer by buffer.
        let skip = bytesWritten;
        let at = pos + bytesWritten;
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
        bytesWritten = total;
      }
    } catch (err) {
      throw ioError(err, `write ${total} bytes at offset ${pos}`, this.path);
    }
    if (pos + total > this.size) this.size = pos + total;
  }

  async truncate(length: number): Promise<void> {
    try {
      await this.#fh.truncate(length);
    } catch (err) {
      throw ioError(err, `set the size to ${length} bytes`, this.path);
    }
    this.size = length;
  }

  async sync(): Promise<void> {
    try {
      await this.#fh.sync();
    } catch (err) {
      throw ioError(err, 'flush to stable storage', this.path);
    }
  }

  /** fdatasync: the data written so far (and the size) durable, other metadata such as times not necessarily. */
  async datasync(): Promise<void> {
    try {
      await this.#fh.datasync();
    } catch (err) {
      throw ioError(err, 'flush data to stable storage', this.path);
    }
  }

  /** Bytes the file occupies on the host (allocated blocks, not its length). */
  async allocatedBytes(): Promise<number> {
    try {
      const st = await this.#fh.stat();
      return st.blocks * 512;
    } catch (err) {
      throw ioError(err, 'stat', this.path);
    }
  }

  async close(): Promise<void> {
    await this.#fh.close().catch(() => {});
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
