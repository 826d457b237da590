/**
 * vmseal's container for the state files VMware has no public encrypted format for (.nvram, .vmsn,
 * .vmem, UEFI variables): a header with a KeySafe around a random per-file key, then AES-256-GCM per
 * 1 MiB chunk (format in state-file-format.ts and docs/vm.md). Every job streams one chunk at a
 * time (memory stays ~2 MiB for a multi-GiB .vmem), writes beside the output and renames it into
 * place only when complete: a decryption never leaves plaintext that did not authenticate under the
 * output's name.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { expected } from '../errors.js';
import { rewrapKeySafe, sealDek, unlockKeySafe, wipe, type KeyCache, type LockerInfo, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { fsyncDir, tempName } from '../util/atomic-file.js';
import { readFully, writeFully } from '../util/file-io.js';
import {
  chunkAad,
  chunkCount,
  chunkKey,
  chunkLength,
  chunkNonce,
  containerSize,
  encodeStateHeader,
  parseFixedHeader,
  parseStateHeader,
  STATE_CHUNK_SIZE,
  STATE_FIXED_HEADER_BYTES,
  STATE_KEY_BYTES,
  STATE_KEY_CIPHER,
  STATE_TAG_BYTES,
  type StateFileHeader,
} from './state-file-format.js';
import { VmError } from './errors.js';

export interface EncryptStateFileOptions {
  /** Lockers of the new file key (e.g. the VM's KEK: `{ kind: 'provider', provider, keyId }`). */
  lockers: LockerSpec[];
  /** KEKs fetched or created for provider lockers are kept here. */
  cache?: KeyCache;
  /** Mode of the output file (default: 0o600). */
  mode?: number;
  signal?: AbortSignal;
}

export interface DecryptStateFileOptions {
  /** How to open the file's KeySafe (providers, cache, passphrase). */
  keys: UnlockOptions;
  /** Mode of the plain output file (default: 0o600, since it holds the plaintext). */
  mode?: number;
  signal?: AbortSignal;
}

export interface RewrapStateFileOptions {
  keys: UnlockOptions;
  add?: LockerSpec[];
  remove?: (locker: LockerInfo) => boolean;
  cache?: KeyCache;
  signal?: AbortSignal;
}

function invalid(what: string, name: string, value: unknown): VmError {
  return new VmError('ERR_INVALID_ARGUMENT', expected(what, name, value));
}

function checkPath(value: unknown, name: string): string {
  if (typeof value !== 'string' || value.length === 0) throw invalid('a file path', name, value);
  return value;
}

function checkMode(value: unknown): number {
  if (value === undefined) return 0o600;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0o777) throw invalid('a file mode 0..0o777', 'options.mode', value);
  return value;
}

/**
 * Write `target` through a temp file beside it (tempName), fsync it and rename it over `target`; on
 * any failure the temp file is removed and `target` is untouched.
 */
export async function writeAside(target: string, mode: number, fill: (out: FileHandle) => Promise<void>): Promise<void> {
  const tmp = tempName(target);
  const out = await open(tmp, 'wx', mode);
  try {
    await fill(out);
    await out.chmod(mode);
    await out.sync();
  } catch (err) {
    await out.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await out.close();
  try {
    await rename(tmp, target);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dirname(target));
}

/** Read and check the header of an open state file. */
async function readHeaderFrom(fh: FileHandle, file: string): Promise<StateFileHeader> {
  const fixed = Buffer.alloc(STATE_FIXED_HEADER_BYTES);
  const got = await readFully(fh, fixed, 0);
  const { keySafeBytes } = parseFixedHeader(fixed.subarray(0, got), file);
  const ks = Buffer.alloc(keySafeBytes);
  const n = await readFully(fh, ks, STATE_FIXED_HEADER_BYTES);
  return parseStateHeader(fixed, ks.subarray(0, n), file);
}

/** The header of a state file (no key needed): version, plain length, file id, KeySafe. */
export async function readStateFileHeader(path: string): Promise<StateFileHeader> {
  checkPath(path, 'path');
  const fh = await open(path, 'r');
  try {
    return await readHeaderFrom(fh, path);
  } finally {
    await fh.close();
  }
}

/** Whether `path` starts with the state-file magic (a cheap check; it proves nothing else). */
export async function isStateFile(path: string): Promise<boolean> {
  const fh = await open(checkPath(path, 'path'), 'r');
  try {
    const head = Buffer.alloc(8);
    return (await readFully(fh, head, 0)) === 8 && head.toString('latin1') === 'VMSEALST';
  } finally {
    await fh.close();
  }
}

/** Chunk `index` of a file: AES-256-GCM ciphertext ‖ tag, under the chunk key `k` (chunkKey). */
export function sealChunk(k: Buffer, header: StateFileHeader, index: number, plain: Buffer): Buffer {
  const n = chunkCount(header.length);
  const c = createCipheriv('aes-256-gcm', k, chunkNonce(header.fileId, index));
  c.setAAD(chunkAad(header.headerHash, index, index === n - 1));
  return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
}

/**
 * The plaintext of chunk `index` (`sealed` is its ciphertext ‖ tag), or ERR_VM_STATE_AUTH naming
 * `file` and the chunk. Nothing of a chunk that does not authenticate is returned.
 */
export function openChunk(k: Buffer, header: StateFileHeader, index: number, sealed: Buffer, file: string): Buffer {
  const n = chunkCount(header.length);
  const len = sealed.length - STATE_TAG_BYTES;
  const d = createDecipheriv('aes-256-gcm', k, chunkNonce(header.fileId, index));
  d.setAAD(chunkAad(header.headerHash, index, index === n - 1));
  d.setAuthTag(sealed.subarray(len));
  const plain = d.update(sealed.subarray(0, len));
  try {
    d.final();
  } catch {
    plain.fill(0);
    throw new VmError(
      'ERR_VM_STATE_AUTH',
      `${file}: chunk ${index} of ${n} does not authenticate (modified, truncated, moved, or taken from another file); restore the file from a backup`,
      { file, chunk: index },
    );
  }
  return plain;
}

/** The file key of a state file, opened from its KeySafe with `keys` (the caller wipes it). */
export async function unlockFileKey(header: StateFileHeader, keys: UnlockOptions, file: string): Promise<Buffer> {
  const opened = await unlockKeySafe(header.keySafe, keys);
  if (opened.cipher !== STATE_KEY_CIPHER || opened.key.length !== STATE_KEY_BYTES) {
    wipe(opened.key);
    throw new VmError('ERR_VM_STATE_FORMAT', `${file}: its KeySafe holds a ${opened.cipher} key, not the ${STATE_KEY_CIPHER} key of a state file`, {
      file,
    });
  }
  return opened.key;
}

/**
 * Encrypt the plain file `input` into the state file `output` (replaced atomically if it exists;
 * `output` may be `input` itself). Returns the header written.
 */
export async function encryptStateFile(input: string, output: string, options: EncryptStateFileOptions): Promise<StateFileHeader> {
  checkPath(input, 'input');
  checkPath(output, 'output');
  if (options === null || typeof options !== 'object') throw invalid('an object', 'options', options);
  const mode = checkMode(options.mode);
  const src = await open(input, 'r');
  const key = randomBytes(STATE_KEY_BYTES);
  let ck: Buffer | undefined;
  try {
    const length = (await src.stat()).size;
    const keySafe = await sealDek(key, { cipher: STATE_KEY_CIPHER, lockers: options.lockers, ...(options.cache ? { cache: options.cache } : {}) });
    const fileId = randomBytes(16);
    const headerBuf = encodeStateHeader({ length, fileId, keySafe });
    const header = parseStateHeader(headerBuf.subarray(0, STATE_FIXED_HEADER_BYTES), headerBuf.subarray(STATE_FIXED_HEADER_BYTES), output);
    const n = chunkCount(length);
    const plain = Buffer.alloc(Math.min(STATE_CHUNK_SIZE, Math.max(length, 1)));
    ck = chunkKey(key, header);
    const k = ck;
    await writeAside(output, mode, async (out) => {
      await writeFully(out, headerBuf, 0);
      let pos = header.headerBytes;
      for (let i = 0; i < n; i++) {
        options.signal?.throwIfAborted();
        const len = chunkLength(length, i);
        const got = await readFully(src, plain.subarray(0, len), i * STATE_CHUNK_SIZE);
        if (got !== len) {
          throw new VmError(
            'ERR_VM_STATE_CHANGED',
            `${input} shrank while it was being encrypted (${length} bytes at the start, ended at ${i * STATE_CHUNK_SIZE + got}): stop the VM that writes it, then encrypt again`,
            { file: input },
          );
        }
        const body = sealChunk(k, header, i, plain.subarray(0, len));
        await writeFully(out, body, pos);
        pos += body.length;
      }
      if ((await src.stat()).size !== length) {
        throw new VmError('ERR_VM_STATE_CHANGED', `${input} changed size while it was being encrypted: stop the VM that writes it, then encrypt again`, {
          file: input,
        });
      }
    });
    plain.fill(0);
    return header;
  } finally {
    wipe(key);
    wipe(ck);
    await src.close();
  }
}

/**
 * Decrypt the state file `input` into the plain file `output` (replaced atomically; may be `input`).
 * Every chunk is authenticated before its plaintext is written, and `output` appears only when all
 * of them did. Returns the header read.
 */
export async function decryptStateFile(input: string, output: string, options: DecryptStateFileOptions): Promise<StateFileHeader> {
  checkPath(input, 'input');
  checkPath(output, 'output');
  if (options === null || typeof options !== 'object' || options.keys === null || typeof options.keys !== 'object') {
    throw invalid('an object with keys', 'options', options);
  }
  const mode = checkMode(options.mode);
  const src = await open(input, 'r');
  let key: Buffer | undefined;
  try {
    const header = await readHeaderFrom(src, input);
    key = await unlockFileKey(header, options.keys, input);
    const k = chunkKey(key, header);
    wipe(key);
    key = k;
    const { length } = header;
    const n = chunkCount(length);
    const fileSize = (await src.stat()).size;
    const sealed = Buffer.alloc(Math.min(STATE_CHUNK_SIZE, Math.max(length, 1)) + STATE_TAG_BYTES);
    await writeAside(output, mode, async (out) => {
      let pos = header.headerBytes;
      for (let i = 0; i < n; i++) {
        options.signal?.throwIfAborted();
        const len = chunkLength(length, i);
        const got = await readFully(src, sealed.subarray(0, len + STATE_TAG_BYTES), pos);
        if (got !== len + STATE_TAG_BYTES) {
          throw new VmError(
            'ERR_VM_STATE_AUTH',
            `${input}: chunk ${i} of ${n} is truncated (the file ends at byte ${pos + got}, the chunk needs ${len + STATE_TAG_BYTES} bytes from ${pos}); restore the file from a backup`,
            { file: input, chunk: i },
          );
        }
        const plain = openChunk(k, header, i, sealed.subarray(0, len + STATE_TAG_BYTES), input);
        await writeFully(out, plain, i * STATE_CHUNK_SIZE);
        plain.fill(0);
        pos += len + STATE_TAG_BYTES;
      }
      if (fileSize !== containerSize(length, header.headerBytes)) {
        throw new VmError(
          'ERR_VM_STATE_AUTH',
          `${input}: ${fileSize - pos} bytes follow chunk ${n - 1} of ${n}, the last chunk, which the file's header does not account for; restore the file from a backup`,
          { file: input, chunk: n - 1 },
        );
      }
    });
    return header;
  } finally {
    wipe(key);
    await src.close();
  }
}

/**
 * Shallow rekey of a state file: the same file key under a changed set of lockers. Only the KeySafe
 * in the header changes; the chunks are copied byte for byte (their tags do not cover the KeySafe),
 * without decrypting them. The file is replaced atomically.
 */
export async function rewrapStateFile(path: string, options: RewrapStateFileOptions): Promise<StateFileHeader> {
  checkPath(path, 'path');
  if (options === null || typeof options !== 'object' || options.keys === null || typeof options.keys !== 'object') {
    throw invalid('an object with keys', 'options', options);
  }
  const src = await open(path, 'r');
  try {
    const header = await readHeaderFrom(src, path);
    const st = await src.stat();
    const keySafe = await rewrapKeySafe(header.keySafe, {
      unlock: options.keys,
      ...(options.add ? { add: options.add } : {}),
      ...(options.remove ? { remove: options.remove } : {}),
      ...(options.cache ? { cache: options.cache } : {}),
    });
    // The version stays: it says how the chunks' key is made from the file key.
    const headerBuf = encodeStateHeader({ length: header.length, fileId: header.fileId, keySafe, version: header.version });
    const next = parseStateHeader(headerBuf.subarray(0, STATE_FIXED_HEADER_BYTES), headerBuf.subarray(STATE_FIXED_HEADER_BYTES), path);
    const buf = Buffer.alloc(STATE_CHUNK_SIZE);
    await writeAside(path, st.mode & 0o777, async (out) => {
      await writeFully(out, headerBuf, 0);
      for (let from = header.headerBytes, to = next.headerBytes; from < st.size;) {
        options.signal?.throwIfAborted();
        const got = await readFully(src, buf.subarray(0, Math.min(buf.length, st.size - from)), from);
        if (got === 0) break;
        await writeFully(out, buf.subarray(0, got), to);
        from += got;
        to += got;
      }
    });
    return next;
  } finally {
    await src.close();
  }
}
