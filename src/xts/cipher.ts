import { expected } from '../errors.js';
import { XtsError, XtsRangeError, XtsTypeError } from './errors.js';
import { availableImplementations, loadNative, type NativeCipherHandle, type NativeXts } from './native.js';
import { XTS_MAX_UNIT_SIZE, XTS_MIN_UNIT_SIZE, type XtsImplementation } from './constants.js';
import { runTransfer, type ChunkIo } from './transfer.js';
import { checkBatch, checkKey, checkOptionsObject, checkOut, checkUint8Array, chooseImplementation } from './validate.js';

export interface XtsCipherOptions {
  /** Force one implementation (default: VMSEAL_XTS_IMPL if set, else the fastest this CPU runs). */
  implementation?: XtsImplementation;
}

export interface XtsBatchOptions {
  /** Bytes per data unit, 16 … 1 MiB; data.byteLength must be a multiple of it. */
  unitSize: number;
  /** Number of the first unit, the XTS tweak of that unit (default: 0). A bigint allows up to 2^64−1. */
  firstUnit?: number | bigint;
  /** Where to write the result (default: a new buffer). Pass `data` itself to work in place. */
  out?: Uint8Array;
}

export interface XtsAsyncBatchOptions extends XtsBatchOptions {
  /** At most this many pool threads work on this call (default: the pool size, see setXtsThreads). */
  threads?: number;
}

/** Native errors carry a code but not our classes: give them the layer's types, same code and message. */
function adopt(err: unknown): unknown {
  if (!(err instanceof Error) || err instanceof XtsError) return err;
  const code = (err as { code?: unknown }).code;
  if (typeof code !== 'string') return err;
  const adopted =
    err instanceof TypeError
      ? new XtsTypeError(code, err.message)
      : err instanceof RangeError
        ? new XtsRangeError(code, err.message)
        : new XtsError(code, err.message);
  if (err.stack) adopted.stack = err.stack.replace(/^[^\n]*/, `${adopted.name}: ${err.message}`);
  return adopted;
}

/** A buffer for results. allocUnsafe: every byte is overwritten before the caller sees it. */
function allocOut(length: number): Uint8Array {
  return Buffer.allocUnsafe(length);
}

/**
 * A zero-filled Buffer of `size` bytes (0 … 2 GiB) over memory the native addon owns. Node will
 * not transfer it (structuredClone/postMessage copy it instead, or throw) nor detach it, so
 * encryptAsync/decryptAsync work on it in place. Any other buffer given to the async calls is
 * copied into native memory first and the result copied back when the work is done: a caller's
 * ArrayBuffer can be transferred or shrunk while the pool runs, and the pool must never write
 * memory JavaScript has taken away. Allocate long-lived I/O buffers (pipeline chunks) here to keep
 * the async path free of copies.
 */
export function allocateCipherBuffer(size: number): Buffer {
  if (typeof size !== 'number') throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected('an integer from 0 to 2147483648', 'size', size));
  try {
    return loadNative().allocateBuffer(size);
  } catch (err) {
    throw adopt(err);
  }
}

/**
 * XTS-AES-128 / XTS-AES-256 (IEEE 1619, dm-crypt `aes-xts-plain64`) over a native key schedule.
 * Data unit n is encrypted with tweak n (128-bit little-endian); units whose length is not a
 * multiple of 16 use ciphertext stealing.
 */
export class XtsCipher implements Disposable {
  /** The implementation this cipher runs. */
  readonly implementation: XtsImplementation;
  /** 128 (32-byte key) or 256 (64-byte key). */
  readonly keyBits: 128 | 256;
  readonly #native: NativeXts;
  #handle: NativeCipherHandle | undefined;

  constructor(key: Uint8Array, options?: XtsCipherOptions) {
    checkKey(key);
    const opts = options === undefined ? {} : checkOptionsObject(options, 'options', 'an object');
    const native = loadNative();
    const implementation = chooseImplementation(opts.implementation, availableImplementations());
    try {
      this.#handle = native.createCipher(key, implementation);
    } catch (err) {
      throw adopt(err);
    }
    this.#native = native;
    this.implementation = implementation;
    this.keyBits = key.byteLength === 32 ? 128 : 256;
  }

  /** True after dispose(). */
  get disposed(): boolean {
    return this.#handle === undefined;
  }

  /** Encrypt whole data units; returns `out` (or a new buffer). Blocks the calling thread. */
  encrypt(data: Uint8Array, options: XtsBatchOptions): Uint8Array {
    return this.#batch(true, data, options);
  }

  /** Decrypt whole data units; returns `out` (or a new buffer). Blocks the calling thread. */
  decrypt(data: Uint8Array, options: XtsBatchOptions): Uint8Array {
    return this.#batch(false, data, options);
  }

  /**
   * Encrypt on the addon's thread pool; resolves to `out` (or a new native-owned buffer). Buffers
   * from allocateCipherBuffer are used in place; others are copied (see allocateCipherBuffer). If
   * `out` is transferred or shrunk before the work completes, rejects with ERR_XTS_DETACHED or
   * ERR_XTS_RESIZED and writes nothing.
   */
  encryptAsync(data: Uint8Array, options: XtsAsyncBatchOptions): Promise<Uint8Array> {
    return this.#batchAsync(true, data, options);
  }

  /** Decrypt on the addon's thread pool; see encryptAsync for buffers and errors. */
  decryptAsync(data: Uint8Array, options: XtsAsyncBatchOptions): Promise<Uint8Array> {
    return this.#batchAsync(false, data, options);
  }

  /** Encrypt one data unit (16 B … 1 MiB) with an explicit 16-byte tweak. */
  encryptUnit(data: Uint8Array, tweak: Uint8Array, out?: Uint8Array): Uint8Array {
    return this.#unit(true, data, tweak, out);
  }

  /** Decrypt one data unit (16 B … 1 MiB) with an explicit 16-byte tweak. */
  decryptUnit(data: Uint8Array, tweak: Uint8Array, out?: Uint8Array): Uint8Array {
    return this.#unit(false, data, tweak, out);
  }

  /**
   * Wipe the native key schedule now (async work still running keeps it until it finishes).
   * Idempotent; every other method then throws ERR_XTS_DISPOSED.
   */
  dispose(): void {
    const handle = this.#handle;
    if (handle === undefined) return;
    this.#handle = undefined;
    this.#native.dispose(handle);
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /**
   * Read `io.buffer.length` bytes from `io.fdIn`, encrypt (or with `decrypt`, decrypt) them in place
   * and write them to `io.fdOut`, in one job on libuv's pool (src/xts/transfer.ts); with
   * `reencryptWith`, decrypt them and encrypt them with that cipher (a deep rekey). For the copy jobs,
   * through the disk layer's DataCipher; resolves the bytes read (fewer: the input ended).
   * @internal
   */
  transferChunk(
    io: ChunkIo,
    options: { unitSize: number; firstUnit: number; decrypt?: boolean; reencryptWith?: { cipher: XtsCipher; unitSize: number; firstUnit: number } },
  ): Promise<number> {
    try {
      const handle = this.#live();
      const next = options.reencryptWith;
      const reencrypt = next ? { handle: next.cipher.#live(), unitSize: next.unitSize, firstUnit: next.firstUnit } : undefined;
      return runTransfer(io, { handle, unitSize: options.unitSize, firstUnit: options.firstUnit, decrypt: options.decrypt === true }, reencrypt).catch(
        (err: unknown) => {
          // A failed pread/pwrite keeps its errno and syscall for the caller to name the files.
          throw typeof (err as { errno?: unknown }).errno === 'number' ? err : adopt(err);
        },
      );
    } catch (err) {
      return Promise.reject(adopt(err));
    }
  }

  #live(): NativeCipherHandle {
    const handle = this.#handle;
    if (handle === undefined) throw new XtsTypeError('ERR_XTS_DISPOSED', 'The XTS cipher has been disposed; create a new one');
    return handle;
  }

  #batch(encrypt: boolean, data: Uint8Array, options: XtsBatchOptions): Uint8Array {
    const handle = this.#live();
    const { unitSize, firstUnit, out: given } = checkBatch(data, options, false);
    const out = given ?? allocOut(data.byteLength);
    try {
      if (encrypt) this.#native.encrypt(handle, data, unitSize, firstUnit, out);
      else this.#native.decrypt(handle, data, unitSize, firstUnit, out);
    } catch (err) {
      throw adopt(err);
    }
    return out;
  }

  /**
   * An async method that awaits the native promise, so that a failure's call site is captured only
   * when there is a failure: V8's async stack trace of an Error made after the await names the
   * functions awaiting this call (the caller, and its callers in the pipeline). A stack captured
   * eagerly at every call (as before) cost ≈4 µs per call on the event loop for a path that almost
   * never fails.
   */
  async #batchAsync(encrypt: boolean, data: Uint8Array, options: XtsAsyncBatchOptions): Promise<Uint8Array> {
    let out: Uint8Array;
    let pending: Promise<void>;
    try {
      const handle = this.#live();
      const checked = checkBatch(data, options, true);
      // A native-owned result buffer: the pool writes it in place, no copy back.
      out = checked.out ?? this.#native.allocateBuffer(data.byteLength);
      const run = encrypt ? this.#native.encryptAsync : this.#native.decryptAsync;
      pending = run(handle, data, checked.unitSize, checked.firstUnit, out, checked.threads);
    } catch (err) {
      throw adopt(err);
    }
    try {
      await pending;
    } catch (err) {
      const adopted = adopt(err);
      // Made here, after the await: its stack is the chain of async callers waiting for this call.
      const callSite = new Error('async XTS call');
      if (adopted instanceof Error && callSite.stack) {
        adopted.stack = `${adopted.stack ?? String(adopted)}\n    --- called from ---\n${callSite.stack.split('\n').slice(1).join('\n')}`;
      }
      throw adopted;
    }
    return out;
  }

  #unit(encrypt: boolean, data: Uint8Array, tweak: Uint8Array, out: Uint8Array | undefined): Uint8Array {
    const handle = this.#live();
    const what = `a Uint8Array of ${XTS_MIN_UNIT_SIZE} to ${XTS_MAX_UNIT_SIZE} bytes`;
    checkUint8Array(data, 'data', what);
    if (data.byteLength < XTS_MIN_UNIT_SIZE || data.byteLength > XTS_MAX_UNIT_SIZE) {
      throw new XtsRangeError('ERR_XTS_UNIT_SIZE', expected(what, 'data', data));
    }
    checkUint8Array(tweak, 'tweak', 'a Uint8Array of 16 bytes');
    if (tweak.byteLength !== 16) throw new XtsRangeError('ERR_XTS_TWEAK_LENGTH', expected('a Uint8Array of 16 bytes', 'tweak', tweak));
    const target = out === undefined ? allocOut(data.byteLength) : checkOut(out, data, 'out');
    try {
      if (encrypt) this.#native.encryptUnit(handle, data, tweak, target);
      else this.#native.decryptUnit(handle, data, tweak, target);
    } catch (err) {
      throw adopt(err);
    }
    return target;
  }
}
