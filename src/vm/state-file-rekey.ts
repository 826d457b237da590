/**
 * Deep rekey of a state file: a new file key under new lockers, every chunk re-encrypted. It streams
 * one chunk at a time from the old container to the new one (written aside, fsynced, renamed over
 * the old: state-file.ts's rule), so the plaintext is never in a file and a crash leaves the old file
 * or the new. Each chunk authenticates under the old key before it is sealed under the new.
 */
import { randomBytes } from 'node:crypto';
import { open, stat } from 'node:fs/promises';
import { sealDek, wipe, type KeyCache, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { readFully, writeFully } from '../util/file-io.js';
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
  STATE_KEY_BYTES,
  STATE_KEY_CIPHER,
  STATE_TAG_BYTES,
  type StateFileHeader,
} from './state-file-format.js';
import { openChunk, readStateFileHeader, sealChunk, unlockFileKey, writeAside } from './state-file.js';

export interface ReencryptStateFileOptions {
  /** Opens the current file key. */
  keys: UnlockOptions;
  /** Lockers of the new file key. */
  lockers: LockerSpec[];
  cache?: KeyCache;
}

/**
 * Re-encrypt the state file `path` in place under a new file key and file id (format version 2),
 * one chunk at a time: memory stays at two chunks whatever the file's size (a .vmem of gigabytes).
 */
export async function reencryptStateFile(path: string, options: ReencryptStateFileOptions): Promise<StateFileHeader> {
  const old = await readStateFileHeader(path);
  const mode = (await stat(path)).mode & 0o777;
  const oldKey = await unlockFileKey(old, options.keys, path);
  const newKey = randomBytes(STATE_KEY_BYTES);
  const oldK = chunkKey(oldKey, old);
  wipe(oldKey);
  let newK: Buffer | undefined;
  try {
    const keySafe = await sealDek(newKey, { cipher: STATE_KEY_CIPHER, lockers: options.lockers, ...(options.cache ? { cache: options.cache } : {}) });
    const headerBuf = encodeStateHeader({ length: old.length, fileId: randomBytes(16), keySafe });
    const next = parseStateHeader(headerBuf.subarray(0, STATE_FIXED_HEADER_BYTES), headerBuf.subarray(STATE_FIXED_HEADER_BYTES), path);
    newK = chunkKey(newKey, next);
    const k = newK;
    const fh = await open(path, 'r');
    try {
      const size = (await fh.stat()).size;
      if (size !== containerSize(old.length, old.headerBytes)) {
        throw new VmError('ERR_VM_STATE_AUTH', `${path} is ${size} bytes, not the ${containerSize(old.length, old.headerBytes)} its header says`, {
          file: path,
          chunk: chunkCount(old.length) - 1,
        });
      }
      const sealed = Buffer.alloc(Math.min(STATE_CHUNK_SIZE, Math.max(old.length, 1)) + STATE_TAG_BYTES);
      await writeAside(path, mode, async (out) => {
        await writeFully(out, headerBuf, 0);
        let from = old.headerBytes;
        let to = next.headerBytes;
        for (let i = 0; i < chunkCount(old.length); i++) {
          const len = chunkLength(old.length, i);
          await readFully(fh, sealed.subarray(0, len + STATE_TAG_BYTES), from);
          const plain = openChunk(oldK, old, i, sealed.subarray(0, len + STATE_TAG_BYTES), path);
          const body = sealChunk(k, next, i, plain);
          plain.fill(0);
          await writeFully(out, body, to);
          from += len + STATE_TAG_BYTES;
          to += body.length;
        }
      });
    } finally {
      await fh.close();
    }
    return next;
  } finally {
    wipe(oldK);
    wipe(newKey);
    wipe(newK);
  }
}
