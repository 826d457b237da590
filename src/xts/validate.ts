// Argument checks of the XTS layer. The native addon repeats every check (it can be called
// directly); these exist to throw the layer's own error classes before crossing into C++.
import { types } from 'node:util';
import { describeValue, expected } from '../errors.js';
import { XtsError, XtsRangeError, XtsTypeError } from './errors.js';
import {
  XTS_IMPLEMENTATIONS,
  XTS_KEY_BYTES_128,
  XTS_KEY_BYTES_256,
  XTS_MAX_THREADS,
  XTS_MAX_UNIT_NUMBER,
  XTS_MAX_UNIT_SIZE,
  XTS_MIN_UNIT_SIZE,
  type XtsImplementation,
} from './constants.js';

const IMPLEMENTATION_LIST = XTS_IMPLEMENTATIONS.map((name) => `"${name}"`).join(', ');

export function isUint8Array(value: unknown): value is Uint8Array {
  // util.types also recognises Uint8Arrays from other realms (vm contexts), unlike instanceof.
  return types.isUint8Array(value);
}

export function checkUint8Array(value: unknown, argument: string, what = 'a Uint8Array'): Uint8Array {
  if (!isUint8Array(value)) throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected(what, argument, value));
  return value;
}

const KEY_WHAT = `a Uint8Array of ${XTS_KEY_BYTES_128} bytes (XTS-AES-128) or ${XTS_KEY_BYTES_256} bytes (XTS-AES-256)`;

export function checkKey(key: unknown): Uint8Array {
  checkUint8Array(key, 'key', KEY_WHAT);
  const k = key as Uint8Array;
  if (k.byteLength !== XTS_KEY_BYTES_128 && k.byteLength !== XTS_KEY_BYTES_256) {
    throw new XtsRangeError('ERR_XTS_KEY_LENGTH', expected(KEY_WHAT, 'key', k));
  }
  // Key1 = Key2 makes XTS degenerate (IEEE 1619-2018 §5.1 forbids it). No early exit.
  const half = k.byteLength / 2;
  let diff = 0;
  for (let i = 0; i < half; i++) diff |= k[i]! ^ k[half + i]!;
  if (diff === 0) {
    throw new XtsRangeError('ERR_XTS_WEAK_KEY', 'Expected a key whose two halves differ for key but received one with equal halves');
  }
  return k;
}

export function checkOptionsObject(value: unknown, argument: string, what: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected(what, argument, value));
  }
  return value as Record<string, unknown>;
}

export function checkImplementationName(value: unknown, argument: string): XtsImplementation {
  if (typeof value !== 'string') {
    throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected(`one of ${IMPLEMENTATION_LIST}`, argument, value));
  }
  if (!(XTS_IMPLEMENTATIONS as readonly string[]).includes(value)) {
    // Implementation names are configuration, not secrets: show the value (bounded).
    const shown = JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
    throw new XtsTypeError('ERR_INVALID_ARG_VALUE', `Expected one of ${IMPLEMENTATION_LIST} for ${argument} but received ${shown}`);
  }
  return value as XtsImplementation;
}

/** The implementation a new cipher uses: the option, else VMSEAL_XTS_IMPL, else the fastest available. */
export function chooseImplementation(option: unknown, available: readonly string[]): XtsImplementation {
  let name: XtsImplementation;
  let source: string;
  if (option !== undefined) {
    name = checkImplementationName(option, 'options.implementation');
    source = 'options.implementation';
  } else if (process.env.VMSEAL_XTS_IMPL) {
    name = checkImplementationName(process.env.VMSEAL_XTS_IMPL, 'the environment variable VMSEAL_XTS_IMPL');
    source = 'VMSEAL_XTS_IMPL';
  } else {
    return available[0] as XtsImplementation;
  }
  if (!available.includes(name)) {
    throw new XtsError(
      'ERR_XTS_IMPL_UNAVAILABLE',
      `The XTS implementation "${name}" (from ${source}) is not available on this CPU/OS; available: ${available.join(', ')}`,
    );
  }
  return name;
}

export function checkUnitSize(value: unknown, argument = 'options.unitSize'): number {
  const what = `an integer from ${XTS_MIN_UNIT_SIZE} to ${XTS_MAX_UNIT_SIZE}`;
  if (typeof value !== 'number') throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected(what, argument, value));
  if (!Number.isInteger(value) || value < XTS_MIN_UNIT_SIZE || value > XTS_MAX_UNIT_SIZE) {
    throw new XtsRangeError('ERR_XTS_UNIT_SIZE', expected(what, argument, value));
  }
  return value;
}

export function checkUnitNumber(value: unknown, argument = 'options.firstUnit'): number | bigint {
  const what = 'a safe integer >= 0 or a bigint from 0 to 2^64-1';
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) throw new XtsRangeError('ERR_XTS_UNIT_NUMBER', expected(what, argument, value));
    return value;
  }
  if (typeof value === 'bigint') {
    if (value < 0n || value > XTS_MAX_UNIT_NUMBER) throw new XtsRangeError('ERR_XTS_UNIT_NUMBER', expected(what, argument, value));
    return value;
  }
  throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected(what, argument, value));
}

export function checkThreads(value: unknown, argument: string): number {
  const what = `an integer from 1 to ${XTS_MAX_THREADS}`;
  if (typeof value !== 'number') throw new XtsTypeError('ERR_INVALID_ARG_TYPE', expected(what, argument, value));
  if (!Number.isInteger(value) || value < 1 || value > XTS_MAX_THREADS) {
    throw new XtsRangeError('ERR_OUT_OF_RANGE', expected(what, argument, value));
  }
  return value;
}

/** `out` must be `data` itself (in place) or memory that does not overlap it. */
function overlaps(a: Uint8Array, b: Uint8Array, length: number): boolean {
  if (a.buffer !== b.buffer || length === 0) return false;
  if (a.byteOffset === b.byteOffset) return false;
  return a.byteOffset < b.byteOffset + length && b.byteOffset < a.byteOffset + length;
}

export function checkOut(out: unknown, data: Uint8Array, argument: string): Uint8Array {
  const needed = data.byteLength;
  checkUint8Array(out, argument, `a Uint8Array of at least ${needed} bytes`);
  const o = out as Uint8Array;
  if (o.byteLength < needed) {
    throw new XtsRangeError('ERR_XTS_OUT_TOO_SMALL', expected(`a Uint8Array of at least ${needed} bytes`, argument, o));
  }
  if (overlaps(data, o, needed)) {
    throw new XtsRangeError('ERR_XTS_OVERLAP', expected('the same memory as data (in place) or memory that does not overlap it', argument, o));
  }
  return o;
}

/**
 * Async work reads and writes the memory while JS runs on: a resizable ArrayBuffer (or growable
 * SharedArrayBuffer) could be shrunk under it, so those are refused there.
 */
function checkFixedLength(view: Uint8Array, argument: string): void {
  const buffer = view.buffer as { resizable?: boolean; growable?: boolean };
  if (buffer.resizable === true || buffer.growable === true) {
    throw new XtsTypeError(
      'ERR_INVALID_ARG_VALUE',
      `Expected a Uint8Array over a fixed-length buffer for ${argument} but received a resizable ${describeValue(view)}`,
    );
  }
}

export interface CheckedBatch {
  unitSize: number;
  firstUnit: number | bigint;
  out: Uint8Array | undefined;
  threads: number | undefined;
}

/** Check a batch call's data and options: data.byteLength = N × unitSize, units firstUnit … firstUnit+N−1 ≤ 2^64−1. */
export function checkBatch(data: unknown, options: unknown, allowThreads: boolean): CheckedBatch {
  checkUint8Array(data, 'data');
  const d = data as Uint8Array;
  const opts = checkOptionsObject(options, 'options', 'an object with unitSize');
  const unitSize = checkUnitSize(opts.unitSize);
  const firstUnit = opts.firstUnit === undefined ? 0 : checkUnitNumber(opts.firstUnit);
  if (d.byteLength % unitSize !== 0) {
    throw new XtsRangeError('ERR_XTS_LENGTH', expected(`a length that is a multiple of unitSize (${unitSize})`, 'data', d));
  }
  // A safe-integer firstUnit plus at most 2^53 units stays far below 2^64: only bigints can overflow.
  const units = BigInt(typeof firstUnit === 'bigint' ? d.byteLength / unitSize : 0);
  if (units > 0n && (firstUnit as bigint) + units - 1n > XTS_MAX_UNIT_NUMBER) {
    throw new XtsRangeError(
      'ERR_XTS_UNIT_NUMBER',
      `Expected a unit number of at most ${XTS_MAX_UNIT_NUMBER - units + 1n} (data holds ${units} units) for options.firstUnit but received ${describeValue(firstUnit)}`,
    );
  }
  const out = opts.out === undefined ? undefined : checkOut(opts.out, d, 'options.out');
  let threads: number | undefined;
  if (allowThreads) {
    if (opts.threads !== undefined) threads = checkThreads(opts.threads, 'options.threads');
    checkFixedLength(d, 'data');
    if (out !== undefined) checkFixedLength(out, 'options.out');
  }
  return { unitSize, firstUnit, out, threads };
}
