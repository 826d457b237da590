import { VmsealError } from '../errors.js';

/**
 * Errors of the XTS layer. Bad arguments throw real `TypeError`s and `RangeError`s (as Node's own
 * APIs do) that carry a stable `code`; failures that are not about an argument (the native addon
 * cannot be loaded, a forced implementation the CPU lacks) throw `XtsError`. All three are
 * recognised by `err instanceof XtsError`.
 *
 * Codes: ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE, ERR_XTS_KEY_LENGTH,
 * ERR_XTS_WEAK_KEY, ERR_XTS_UNIT_SIZE, ERR_XTS_LENGTH, ERR_XTS_OUT_TOO_SMALL, ERR_XTS_OVERLAP,
 * ERR_XTS_UNIT_NUMBER, ERR_XTS_TWEAK_LENGTH, ERR_XTS_DISPOSED, ERR_XTS_DETACHED (a detached
 * buffer passed in) (TypeError/RangeError); ERR_XTS_IMPL_UNAVAILABLE, ERR_NATIVE_NOT_FOUND,
 * ERR_XTS_CANCELLED, ERR_XTS_NATIVE, ERR_XTS_DETACHED / ERR_XTS_RESIZED (an async call's `out` was
 * transferred / shrunk before the result could be written) (XtsError); ERR_TRANSFER_IO (a failed
 * pread/pwrite of transferChunk: a plain Error with `errno` and `syscall`).
 */
/** Every code the XTS layer (and its native addon) throws. */
export type XtsErrorCode =
  | 'ERR_INVALID_ARG_TYPE'
  | 'ERR_INVALID_ARG_VALUE'
  | 'ERR_OUT_OF_RANGE'
  | 'ERR_XTS_KEY_LENGTH'
  | 'ERR_XTS_WEAK_KEY'
  | 'ERR_XTS_UNIT_SIZE'
  | 'ERR_XTS_LENGTH'
  | 'ERR_XTS_OUT_TOO_SMALL'
  | 'ERR_XTS_OVERLAP'
  | 'ERR_XTS_UNIT_NUMBER'
  | 'ERR_XTS_TWEAK_LENGTH'
  | 'ERR_XTS_DISPOSED'
  | 'ERR_XTS_DETACHED'
  | 'ERR_XTS_RESIZED'
  | 'ERR_XTS_IMPL_UNAVAILABLE'
  | 'ERR_NATIVE_NOT_FOUND'
  | 'ERR_XTS_CANCELLED'
  | 'ERR_XTS_NATIVE'
  // transferChunk: a pread or pwrite failed (copy jobs report it as ERR_VMDK_IO naming the files)
  | 'ERR_TRANSFER_IO';

const XTS_ERROR = Symbol.for('vmseal.XtsError');
// Marks every vmseal error, including the TypeError/RangeError ones that cannot inherit from
// VmsealError, so that VmsealError can recognise them too if it adopts the same Symbol.hasInstance.
const VMSEAL_ERROR = Symbol.for('vmseal.VmsealError');

function brand(error: Error): void {
  Object.defineProperty(error, XTS_ERROR, { value: true });
  Object.defineProperty(error, VMSEAL_ERROR, { value: true });
}

export class XtsError extends VmsealError {
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    brand(this);
  }

  /** True for XtsError, XtsTypeError and XtsRangeError alike. */
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === 'object' && value !== null && (value as Record<symbol, unknown>)[XTS_ERROR] === true;
  }
}

/** A bad argument type (or a disposed cipher): a TypeError with a `code`. */
export class XtsTypeError extends TypeError {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = 'XtsTypeError';
    brand(this);
  }
}

/** A value of the right type outside its allowed range: a RangeError with a `code`. */
export class XtsRangeError extends RangeError {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
    this.name = 'XtsRangeError';
    brand(this);
  }
}
