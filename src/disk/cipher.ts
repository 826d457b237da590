/**
 * The data cipher of an encrypted disk: XTS over data units of the virtual disk, tweak = unit
 * number (little-endian), i.e. dm-crypt's aes-xts-plain64. Works in place on caller buffers whose
 * length is a whole number of units; large buffers go to the native thread pool.
 */
import { XtsCipher } from '../xts/index.js';
import type { ChunkIo } from '../xts/transfer.js';
import { DiskError } from './errors.js';
import { KEY_BYTES, type CipherName, type DataUnitSize } from './params.js';
import { expected } from '../errors.js';

export interface DataCipher {
  readonly cipher: CipherName;
  readonly unitSize: DataUnitSize;
  /** Which native implementation runs (e.g. "vaes-avx512"). */
  readonly implementation: string;
  /** Encrypt `data` in place; its first byte is the start of unit `firstUnit`. */
  encrypt(data: Uint8Array, firstUnit: number): Promise<void>;
  decrypt(data: Uint8Array, firstUnit: number): Promise<void>;
  /**
   * Read `io.buffer.length` bytes from `io.fdIn`, encrypt (or decrypt) them in place and write them
   * to `io.fdOut`, as one job on libuv's pool (src/xts/transfer.ts); `io.buffer` must come from
   * allocateCipherBuffer and its first byte is the start of unit `firstUnit`. Resolves the bytes
   * read: fewer than the buffer's length when the input ended (the job fails: a truncated input).
   */
  transfer(io: ChunkIo, firstUnit: number, direction: 'encrypt' | 'decrypt'): Promise<number>;
  /**
   * As transfer(), but the chunk (whose first byte is virtual offset `offset`, a whole number of
   * units of both ciphers) is decrypted with this cipher and encrypted with `into` (another
   * DataCipher of createDataCipher): a deep rekey's chunk.
   */
  reencrypt(io: ChunkIo, offset: number, into: DataCipher): Promise<number>;
  /** Wipe the key. */
  dispose(): void;
}

export interface DataCipherOptions {
  /** Native pool threads per call (default: the pool size). */
  threads?: number;
}

/** Below this many bytes a synchronous native call is cheaper than a thread-pool round trip. */
const ASYNC_THRESHOLD = 64 * 1024;

export function createDataCipher(cipher: CipherName, key: Uint8Array, unitSize: DataUnitSize, opts: DataCipherOptions = {}): DataCipher {
  if (key.length !== KEY_BYTES[cipher]) {
    throw new DiskError('ERR_INVALID_ARGUMENT', expected(`a ${KEY_BYTES[cipher]}-byte key`, cipher, key));
  }
  // The native core is required (its load error says how to build it): a silent slow fallback would
  // turn a missing build into 50× slower jobs nobody notices.
  const xts = new XtsCipher(key);
  const check = (data: Uint8Array): void => {
    if (data.byteLength % unitSize !== 0) {
      throw new DiskError('ERR_INVALID_ARGUMENT', expected(`a whole number of ${unitSize}-byte units`, 'data', data));
    }
  };
  const threads = opts.threads;
  const made: DataCipher = {
    cipher,
    unitSize,
    implementation: xts.implementation,
    async encrypt(data, firstUnit) {
      check(data);
      if (data.byteLength === 0) return;
      if (data.byteLength < ASYNC_THRESHOLD) xts.encrypt(data, { unitSize, firstUnit, out: data });
      else await xts.encryptAsync(data, { unitSize, firstUnit, out: data, ...(threads ? { threads } : {}) });
    },
    async decrypt(data, firstUnit) {
      check(data);
      if (data.byteLength === 0) return;
      if (data.byteLength < ASYNC_THRESHOLD) xts.decrypt(data, { unitSize, firstUnit, out: data });
      else await xts.decryptAsync(data, { unitSize, firstUnit, out: data, ...(threads ? { threads } : {}) });
    },
    transfer(io, firstUnit, direction) {
      check(io.buffer);
      return xts.transferChunk(io, { unitSize, firstUnit, decrypt: direction === 'decrypt' });
    },
    reencrypt(io, offset, into) {
      check(io.buffer);
      const other = xtsOf.get(into);
      if (!other) return Promise.reject(new DiskError('ERR_INVALID_ARGUMENT', 'reencrypt() needs a DataCipher made by createDataCipher'));
      if (io.buffer.byteLength % into.unitSize !== 0 || offset % unitSize !== 0 || offset % into.unitSize !== 0)
        return Promise.reject(
          new DiskError('ERR_INVALID_ARGUMENT', expected(`whole units of both ciphers (${unitSize} and ${into.unitSize} bytes)`, 'offset', offset)),
        );
      return xts.transferChunk(io, {
        unitSize,
        firstUnit: offset / unitSize,
        decrypt: true,
        reencryptWith: { cipher: other, unitSize: into.unitSize, firstUnit: offset / into.unitSize },
      });
    },
    dispose() {
      xts.dispose();
    },
  };
  xtsOf.set(made, xts);
  return made;
}

/** Each DataCipher's native cipher, for reencrypt() (which needs the other cipher's handle). */
const xtsOf = new WeakMap<DataCipher, XtsCipher>();
