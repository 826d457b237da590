/**
 * A small state file (a UEFI variables file) opened for reading and writing in place, for `vmseal
 * serve`: the plaintext lives in memory only, and a rewrite re-encrypts the whole file and replaces
 * it atomically (src/util/atomic-file.ts: temp file beside it, fsync, rename, fsync of the folder).
 * A crash or SIGKILL at any moment leaves the old file or the new one, each complete and
 * authenticated; the plaintext is never written to a file.
 *
 * Writes are write-back, as a disk's cache: a write changes the memory and returns; a rewrite holding
 * it runs at a flush (NBD FLUSH, or a FUA write: export.ts flushes after it), at close, and at the
 * latest WRITE_BACK_MS after the first write not yet written. Why not a rewrite per write: OVMF
 * programs its flash one byte at a time, and qemu's pflash device sends each byte to the block layer
 * as a synchronous 512-byte write — thousands per boot, each of which would wait for a rewrite
 * (an encryption of the whole file and two fsyncs): a first boot took minutes that way.
 *
 * Each rewrite keeps the file key (so the KeySafe, and with it every locker, stays byte for byte:
 * re-sealing a key needs every locker's secret, a passphrase included) and draws a new random file
 * id, which with format version 2 gives the chunks a key of their own (state-file-format.ts): no GCM
 * nonce is ever used twice under one key, however many times the firmware writes.
 *
 * Writes that arrive while a rewrite runs are committed together by the next one (group commit). A
 * rewrite that fails leaves the file as it was, and the image refuses every later request (its memory
 * no longer matches the file).
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { expected } from '../errors.js';
import { wipe, type UnlockOptions } from '../keys/index.js';
import { isTempNameOf, writeFileAtomic } from '../util/atomic-file.js';
import { readFully } from '../util/file-io.js';
import { VmError } from './errors.js';
import {
  chunkCount,
  chunkKey,
  chunkLength,
  containerSize,
  encodeStateHeader,
  parseStateHeader,
  STATE_CHUNK_SIZE,
  STATE_FIXED_HEADER_BYTES,
  STATE_TAG_BYTES,
  type StateFileHeader,
} from './state-file-format.js';
import { openChunk, readStateFileHeader, sealChunk, unlockFileKey } from './state-file.js';

/**
 * Largest state file opened as an image: the whole plaintext is held in memory and rewritten on
 * every write. OVMF's variables are 128 KiB or 528 KiB, AAVMF's (aarch64) 64 MiB.
 */
export const STATE_IMAGE_MAX_BYTES = 64 * 1024 * 1024;

/** Longest time a write stays in memory only without a flush: what a crash of the server may lose. */
const WRITE_BACK_MS = 1000;

export interface OpenStateFileImageOptions {
  /** How to open the file's KeySafe. */
  keys: UnlockOptions;
  /** Refuse writes (default: false). */
  readOnly?: boolean;
}

export class StateFileImage {
  readonly path: string;
  readonly readOnly: boolean;
  #plain: Buffer;
  #fileKey: Buffer;
  readonly #keySafe: string;
  /** The rewrite that will take the writes made since the last one started (group commit). */
  #queued: Promise<void> | undefined;
  /** The last rewrite started, settled or not: the next one starts after it. */
  #tail: Promise<void> = Promise.resolve();
  #failed: Error | undefined;
  #closed = false;
  /** Memory holds writes that no rewrite has taken yet. */
  #dirty = false;
  /** The deferred rewrite of those writes (WRITE_BACK_MS). */
  #timer: NodeJS.Timeout | undefined;

  /** Use openStateFileImage(). */
  constructor(path: string, plain: Buffer, fileKey: Buffer, keySafe: string, readOnly: boolean) {
    this.path = path;
    this.#plain = plain;
    this.#fileKey = fileKey;
    this.#keySafe = keySafe;
    this.readOnly = readOnly;
  }

  /** Bytes of the plain file. */
  get length(): number {
    return this.#plain.length;
  }

  async read(offset: number, target: Buffer): Promise<void> {
    this.#check('read', offset, target.length);
    this.#plain.copy(target, 0, offset, offset + target.length);
  }

  /**
   * Change [offset, offset + data.length) in memory; durable after the next flush() (or, unasked,
   * within WRITE_BACK_MS). A failed earlier rewrite is reported here.
   */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.#check('write', offset, data.length);
    if (this.readOnly) throw new VmError('ERR_INVALID_ARGUMENT', `cannot write ${this.path}: it was opened read-only`, { file: this.path });
    this.#plain.set(data, offset);
    this.#dirty = true;
    // A failure of the deferred rewrite is kept in #failed and given to the next request.
    this.#timer ??= setTimeout(() => void this.#commit().catch(() => undefined), WRITE_BACK_MS).unref();
  }

  /** Every write made before it is durable when it returns. */
  async flush(): Promise<void> {
    if (this.#failed) throw this.#failed;
    if (this.#dirty) await this.#commit();
    else await this.#tail;
    if (this.#failed) throw this.#failed;
  }

  /** Write what is not written yet, then wipe the plaintext and the key. Safe to call twice. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      if (this.#dirty && !this.#failed) await this.#commit();
      await this.#tail;
    } finally {
      clearTimeout(this.#timer);
      this.#plain.fill(0);
      wipe(this.#fileKey);
    }
  }

  #check(op: string, offset: number, length: number): void {
    if (this.#closed) throw new VmError('ERR_INVALID_ARGUMENT', `cannot ${op} ${this.path}: it is closed`, { file: this.path });
    if (this.#failed) throw this.#failed;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > this.#plain.length) {
      throw new VmError('ERR_INVALID_ARGUMENT', expected(`an offset within the ${this.#plain.length} bytes of ${this.path}`, 'offset', offset));
    }
  }

  #commit(): Promise<void> {
    if (this.#queued) return this.#queued;
    const run = this.#tail.then(() => {
      // From here the writes that come go to the next rewrite: this one encrypts the memory now.
      this.#queued = undefined;
      this.#dirty = false;
      clearTimeout(this.#timer);
      this.#timer = undefined;
      return this.#rewrite();
    });
    this.#queued = run;
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #rewrite(): Promise<void> {
    if (this.#failed) throw this.#failed;
    const bytes = sealImage(this.#plain, this.#fileKey, this.#keySafe, this.path);
    try {
      await writeFileAtomic(this.path, bytes, 'keep');
    } catch (err) {
      // The file holds the last rewrite that succeeded; the memory is ahead of it from now on.
      this.#failed = err instanceof Error ? err : new Error(String(err));
      throw err;
    }
  }
}

/** The whole container of `plain` under `fileKey`, with a new file id (format version 2). */
function sealImage(plain: Buffer, fileKey: Buffer, keySafe: string, file: string): Buffer {
  const headerBuf = encodeStateHeader({ length: plain.length, fileId: randomBytes(16), keySafe });
  const header = parseStateHeader(headerBuf.subarray(0, STATE_FIXED_HEADER_BYTES), headerBuf.subarray(STATE_FIXED_HEADER_BYTES), file);
  const k = chunkKey(fileKey, header);
  try {
    const parts = [headerBuf];
    for (let i = 0; i < chunkCount(plain.length); i++) {
      const from = i * STATE_CHUNK_SIZE;
      parts.push(sealChunk(k, header, i, plain.subarray(from, from + chunkLength(plain.length, i))));
    }
    return Buffer.concat(parts);
  } finally {
    wipe(k);
  }
}

/** Remove temp files of `path` left by a rewrite that was killed (they hold ciphertext only). */
async function removeStaleTemps(path: string): Promise<void> {
  const names = await readdir(dirname(path)).catch(() => [] as string[]);
  for (const n of names) if (isTempNameOf(path, n)) await unlink(join(dirname(path), n)).catch(() => undefined);
}

/**
 * Open a state file as a writable image (see the top of this file). The caller holds the file's
 * exclusive lock (stale temp files of the file are removed). Errors: ERR_VM_STATE_FORMAT (not a
 * state file, or over STATE_IMAGE_MAX_BYTES), ERR_VM_STATE_AUTH, the key layer's codes.
 */
export async function openStateFileImage(path: string, options: OpenStateFileImageOptions): Promise<StateFileImage> {
  if (typeof path !== 'string' || path.length === 0) throw new VmError('ERR_INVALID_ARGUMENT', expected('a file path', 'path', path));
  if (options === null || typeof options !== 'object' || options.keys === null || typeof options.keys !== 'object') {
    throw new VmError('ERR_INVALID_ARGUMENT', expected('an object with keys', 'options', options));
  }
  const header: StateFileHeader = await readStateFileHeader(path);
  if (header.length > STATE_IMAGE_MAX_BYTES) {
    throw new VmError(
      'ERR_VM_STATE_FORMAT',
      `${path} holds ${header.length} bytes; a state file is served only up to ${STATE_IMAGE_MAX_BYTES} bytes (UEFI variables): decrypt it to use it`,
      { file: path },
    );
  }
  if (options.readOnly !== true) await removeStaleTemps(path);
  const fileKey = await unlockFileKey(header, options.keys, path);
  const plain = Buffer.alloc(header.length);
  let ok = false;
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size !== containerSize(header.length, header.headerBytes)) {
      throw new VmError(
        'ERR_VM_STATE_AUTH',
        `${path} is ${size} bytes, not the ${containerSize(header.length, header.headerBytes)} its header says; restore it from a backup`,
        {
          file: path,
          chunk: chunkCount(header.length) - 1,
        },
      );
    }
    const k = chunkKey(fileKey, header);
    try {
      const sealed = Buffer.alloc(Math.min(STATE_CHUNK_SIZE, Math.max(header.length, 1)) + STATE_TAG_BYTES);
      let pos = header.headerBytes;
      for (let i = 0; i < chunkCount(header.length); i++) {
        const len = chunkLength(header.length, i);
        await readFully(fh, sealed.subarray(0, len + STATE_TAG_BYTES), pos);
        const p = openChunk(k, header, i, sealed.subarray(0, len + STATE_TAG_BYTES), path);
        p.copy(plain, i * STATE_CHUNK_SIZE);
        p.fill(0);
        pos += len + STATE_TAG_BYTES;
      }
    } finally {
      wipe(k);
    }
    ok = true;
    return new StateFileImage(path, plain, fileKey, header.keySafe, options.readOnly === true);
  } finally {
    await fh.close();
    if (!ok) {
      plain.fill(0);
      wipe(fileKey);
    }
  }
}
