/**
 * The data cipher of an encrypted disk: XTS over data units of the virtual disk, tweak = unit
 * number (little-endian), i.e. dm-crypt's aes-xts-plain64. Works in place on caller buffers whose
 * length is a whole number of units; large buffers go to the native thread pool.
 */
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { XtsCipher } from '../xts/index.js';
import { DiskError } from './errors.js';
import { KEY_BYTES, type CipherName, type DataUnitSize } from './params.js';

export interface DataCipher {
  readonly cipher: CipherName;
  readonly unitSize: DataUnitSize;
  /** Which implementation runs (the native one's name, or "node:crypto"). */
  readonly implementation: string;
  /** Encrypt `data` in place; its first byte is the start of unit `firstUnit`. */
  encrypt(data: Uint8Array, firstUnit: number): Promise<void>;
  decrypt(data: Uint8Array, firstUnit: number): Promise<void>;
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
    throw new DiskError('ERR_ARGUMENT', `Expected a ${KEY_BYTES[cipher]}-byte key for ${cipher} but received ${key.length} bytes`);
  }
  let xts: XtsCipher;
  try {
    xts = new XtsCipher(key);
  } catch (err) {
    if ((err as { code?: string }).code === 'ERR_NATIVE_NOT_FOUND') return nodeCryptoCipher(cipher, key, unitSize);
    throw err;
  }
  const check = (data: Uint8Array): void => {
    if (data.byteLength % unitSize !== 0) {
      throw new DiskError('ERR_ARGUMENT', `Expected a whole number of ${unitSize}-byte units but received ${data.byteLength} bytes`);
    }
  };
  const threads = opts.threads;
  return {
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
    dispose() {
      xts.dispose();
    },
  };
}

/** Used only when the native addon is not built: node:crypto, one cipher object per unit (slow, correct). */
function nodeCryptoCipher(cipher: CipherName, key: Uint8Array, unitSize: DataUnitSize): DataCipher {
  const k = Buffer.from(key);
  let disposed = false;
  const run = (data: Uint8Array, firstUnit: number, enc: boolean): void => {
    if (disposed) throw new DiskError('ERR_CLOSED', 'the data cipher was disposed');
    if (data.byteLength % unitSize !== 0) {
      throw new DiskError('ERR_ARGUMENT', `Expected a whole number of ${unitSize}-byte units but received ${data.byteLength} bytes`);
    }
    const iv = Buffer.alloc(16);
    const view = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    for (let off = 0, u = firstUnit; off < view.length; off += unitSize, u++) {
      iv.fill(0);
      iv.writeBigUInt64LE(BigInt(u), 0);
      const c = enc ? createCipheriv(cipher, k, iv) : createDecipheriv(cipher, k, iv);
      const unit = view.subarray(off, off + unitSize);
      c.update(unit).copy(unit);
      c.final();
    }
  };
  return {
    cipher,
    unitSize,
    implementation: 'node:crypto',
    async encrypt(data, firstUnit) {
      run(data, firstUnit, true);
    },
    async decrypt(data, firstUnit) {
      run(data, firstUnit, false);
    },
    dispose() {
      disposed = true;
      k.fill(0);
    },
  };
}
