/**
 * The root of vmseal's error types. Every layer has its own subclass (XtsError, VmdkFormatError,
 * KeySafeError, KmipError, …), each with a stable `code` that callers can branch on. Messages name
 * the argument, field, file or offset that was wrong and never contain key material.
 */
const VMSEAL_ERROR_MARK = Symbol.for('vmseal.VmsealError');

export class VmsealError extends Error {
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }

  /**
   * Errors that must extend TypeError/RangeError (argument errors of the XTS layer) cannot extend
   * VmsealError too; they carry this mark instead, so `instanceof VmsealError` holds for every error
   * vmseal throws.
   */
  static override [Symbol.hasInstance](value: unknown): boolean {
    if (typeof value !== 'object' || value === null) return false;
    if (Function.prototype[Symbol.hasInstance].call(this, value)) return true;
    return this === VmsealError && (value as Record<symbol, unknown>)[VMSEAL_ERROR_MARK] === true;
  }
}
/** Describe a received value for an error message without echoing its contents (which may be secret). */
export function describeValue(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') {
    return `${String(value)} of type ${typeof value}`;
  }
  if (typeof value === 'string') return `a string of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `${value.constructor.name} of length ${value.byteLength}`;
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  return `a value of type ${typeof value}`;
}
