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

/**
 * The one code for a bad argument to an API call of any layer above xts. Each layer still throws
 * its own class (DiskError, PipelineError, VmdkFormatError, KeyError, KmipError) so `instanceof`
 * tells which layer refused, but the code is the same everywhere: callers (and the CLI's exit-code
 * table) test one code, not one per layer. The XTS layer keeps Node's own codes
 * (ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE) on its TypeError/RangeError,
 * because its native addon throws them too and it mirrors Node's crypto API (see docs/errors.md).
 */
export type ArgumentErrorCode = 'ERR_INVALID_ARGUMENT';

/** The one message shape of an argument error: "Expected <what> for <argument> but received <value>". */
export function expected(what: string, argument: string, value: unknown): string {
  return `Expected ${what} for ${argument} but received ${describeValue(value)}`;
}

/**
 * The same shape for an argument that takes one of a few names (cipher, subformat, format): a short
 * ASCII name is quoted back (names are not secret, and "received 'aes-256-cbc'" says more than "a
 * string of length 11"); anything else is described without its contents.
 */
export function expectedOneOf(choices: readonly (string | number)[], argument: string, value: unknown): string {
  const list = choices.map((c) => (typeof c === 'string' ? `'${c}'` : String(c)));
  const what = list.length <= 2 ? list.join(' or ') : `one of ${list.join(', ')}`;
  return `Expected ${what} for ${argument} but received ${describeChoice(value)}`;
}

/** A received name, quoted when it is a short ASCII word, else described by describeValue. */
export function describeChoice(value: unknown): string {
  if (typeof value === 'string' && /^[A-Za-z0-9._-]{1,32}$/.test(value)) return `'${value}'`;
  return describeValue(value);
}
