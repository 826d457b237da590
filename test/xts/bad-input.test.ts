// Every bad input of the TypeScript API: the error class, the `code` and the message, word for
// word ("Expected <what> for <argument> but received <value>"). Also run against the sanitizer build.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { VmsealError } from '../../src/errors.js';
import { XtsCipher, XtsError, XtsRangeError, XtsTypeError, getXtsThreads, setXtsThreads, xtsInfo } from '../../src/xts/index.js';

function caught(fn: () => unknown): Error & { code?: string } {
  try {
    fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a throw');
}

async function rejected(fn: () => Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await fn();
  } catch (err) {
    return err as Error & { code?: string };
  }
  throw new Error('expected a rejection');
}

function expectError(err: Error & { code?: string }, kind: 'type' | 'range' | 'plain', code: string, message: string): void {
  if (kind === 'type') {
    expect(err).toBeInstanceOf(TypeError);
    expect(err).toBeInstanceOf(XtsTypeError);
  } else if (kind === 'range') {
    expect(err).toBeInstanceOf(RangeError);
    expect(err).toBeInstanceOf(XtsRangeError);
  } else {
    expect(err).toBeInstanceOf(VmsealError);
  }
  expect(err).toBeInstanceOf(XtsError);
  expect(err.code).toBe(code);
  expect(err.message).toBe(message);
}

const key64 = randomBytes(64);
const KEY_WHAT = 'a Uint8Array of 32 bytes (XTS-AES-128) or 64 bytes (XTS-AES-256)';
const IMPLS = '"vaes-avx512", "vaes-avx2", "aesni", "portable"';

describe('XtsCipher constructor', () => {
  it.each([
    ['undefined', undefined, 'undefined'],
    ['a string', 'k'.repeat(64), 'a string of length 64'],
    ['an array', Array(64).fill(1), 'an array of length 64'],
    ['a Uint16Array', new Uint16Array(32), 'Uint16Array of length 64'],
    ['an ArrayBuffer', new ArrayBuffer(64), 'a value of type object'],
    ['a number', 64, '64 of type number'],
  ])('rejects %s as key', (_name, key, described) => {
    expectError(
      caught(() => new XtsCipher(key as unknown as Uint8Array)),
      'type',
      'ERR_INVALID_ARG_TYPE',
      `Expected ${KEY_WHAT} for key but received ${described}`,
    );
  });

  it.each([0, 16, 31, 33, 48, 63, 65, 128])('rejects a key of %i bytes', (length) => {
    expectError(
      caught(() => new XtsCipher(new Uint8Array(length))),
      'range',
      'ERR_XTS_KEY_LENGTH',
      `Expected ${KEY_WHAT} for key but received Uint8Array of length ${length}`,
    );
  });

  it.each([32, 64])('rejects a %i-byte key with equal halves', (length) => {
    const half = randomBytes(length / 2);
    expectError(
      caught(() => new XtsCipher(Buffer.concat([half, half]))),
      'range',
      'ERR_XTS_WEAK_KEY',
      'Expected a key whose two halves differ for key but received one with equal halves',
    );
  });

  it('accepts keys whose halves differ in one bit only', () => {
    const key = Buffer.concat([Buffer.alloc(32, 7), Buffer.alloc(32, 7)]);
    key[63] ^= 1;
    expect(new XtsCipher(key).keyBits).toBe(256);
  });

  it('rejects bad options', () => {
    expectError(
      caught(() => new XtsCipher(key64, 'aesni' as never)),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected an object for options but received a string of length 5',
    );
    expectError(
      caught(() => new XtsCipher(key64, { implementation: 'aes' as never })),
      'type',
      'ERR_INVALID_ARG_VALUE',
      `Expected one of ${IMPLS} for options.implementation but received "aes"`,
    );
    expectError(
      caught(() => new XtsCipher(key64, { implementation: 3 as never })),
      'type',
      'ERR_INVALID_ARG_TYPE',
      `Expected one of ${IMPLS} for options.implementation but received 3 of type number`,
    );
  });

  it('refuses an implementation the CPU lacks, and VMSEAL_XTS_IMPL naming one', () => {
    const { available } = xtsInfo();
    const missing = (['vaes-avx512', 'vaes-avx2', 'aesni'] as const).find((i) => !available.includes(i));
    if (missing) {
      expectError(
        caught(() => new XtsCipher(key64, { implementation: missing })),
        'plain',
        'ERR_XTS_IMPL_UNAVAILABLE',
        `The XTS implementation "${missing}" (from options.implementation) is not available on this CPU/OS; available: ${available.join(', ')}`,
      );
    }
    const saved = process.env.VMSEAL_XTS_IMPL;
    try {
      process.env.VMSEAL_XTS_IMPL = 'fastest';
      expectError(
        caught(() => new XtsCipher(key64)),
        'type',
        'ERR_INVALID_ARG_VALUE',
        `Expected one of ${IMPLS} for the environment variable VMSEAL_XTS_IMPL but received "fastest"`,
      );
      expect(() => xtsInfo()).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
      if (missing) {
        process.env.VMSEAL_XTS_IMPL = missing;
        expect(() => new XtsCipher(key64)).toThrow(expect.objectContaining({ code: 'ERR_XTS_IMPL_UNAVAILABLE' }));
      }
      process.env.VMSEAL_XTS_IMPL = 'portable';
      expect(new XtsCipher(key64).implementation).toBe('portable');
      expect(xtsInfo().implementation).toBe('portable');
      // An explicit option wins over the environment.
      expect(new XtsCipher(key64, { implementation: available[0] as never }).implementation).toBe(available[0]);
    } finally {
      if (saved === undefined) delete process.env.VMSEAL_XTS_IMPL;
      else process.env.VMSEAL_XTS_IMPL = saved;
    }
  });
});

describe('batch calls', () => {
  const cipher = new XtsCipher(key64);
  const data = randomBytes(4096);
  const UNIT_WHAT = 'an integer from 16 to 1048576';
  const FIRST_WHAT = 'a safe integer >= 0 or a bigint from 0 to 2^64-1';

  type Case = [string, () => unknown, 'type' | 'range', string, string];
  const cases: Case[] = [
    [
      'data not a Uint8Array',
      () => cipher.encrypt('abc' as never, { unitSize: 512 }),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected a Uint8Array for data but received a string of length 3',
    ],
    [
      'data a DataView',
      () => cipher.encrypt(new DataView(new ArrayBuffer(512)) as never, { unitSize: 512 }),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected a Uint8Array for data but received DataView of length 512',
    ],
    [
      'no options',
      () => cipher.encrypt(data, undefined as never),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected an object with unitSize for options but received undefined',
    ],
    [
      'options a number',
      () => cipher.encrypt(data, 512 as never),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected an object with unitSize for options but received 512 of type number',
    ],
    [
      'no unitSize',
      () => cipher.encrypt(data, {} as never),
      'type',
      'ERR_INVALID_ARG_TYPE',
      `Expected ${UNIT_WHAT} for options.unitSize but received undefined`,
    ],
    [
      'unitSize a string',
      () => cipher.encrypt(data, { unitSize: '512' as never }),
      'type',
      'ERR_INVALID_ARG_TYPE',
      `Expected ${UNIT_WHAT} for options.unitSize but received a string of length 3`,
    ],
    [
      'unitSize 15',
      () => cipher.encrypt(data, { unitSize: 15 }),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${UNIT_WHAT} for options.unitSize but received 15 of type number`,
    ],
    [
      'unitSize 0',
      () => cipher.encrypt(data, { unitSize: 0 }),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${UNIT_WHAT} for options.unitSize but received 0 of type number`,
    ],
    [
      'unitSize 512.5',
      () => cipher.encrypt(data, { unitSize: 512.5 }),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${UNIT_WHAT} for options.unitSize but received 512.5 of type number`,
    ],
    [
      'unitSize NaN',
      () => cipher.encrypt(data, { unitSize: NaN }),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${UNIT_WHAT} for options.unitSize but received NaN of type number`,
    ],
    [
      'unitSize 2 MiB',
      () => cipher.encrypt(data, { unitSize: 2 ** 21 }),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${UNIT_WHAT} for options.unitSize but received 2097152 of type number`,
    ],
    [
      'length not a multiple',
      () => cipher.encrypt(data.subarray(0, 1000), { unitSize: 512 }),
      'range',
      'ERR_XTS_LENGTH',
      'Expected a length that is a multiple of unitSize (512) for data but received Buffer of length 1000',
    ],
    [
      'firstUnit negative',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: -1 }),
      'range',
      'ERR_XTS_UNIT_NUMBER',
      `Expected ${FIRST_WHAT} for options.firstUnit but received -1 of type number`,
    ],
    [
      'firstUnit fractional',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: 1.5 }),
      'range',
      'ERR_XTS_UNIT_NUMBER',
      `Expected ${FIRST_WHAT} for options.firstUnit but received 1.5 of type number`,
    ],
    [
      'firstUnit unsafe',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: 2 ** 53 }),
      'range',
      'ERR_XTS_UNIT_NUMBER',
      `Expected ${FIRST_WHAT} for options.firstUnit but received 9007199254740992 of type number`,
    ],
    [
      'firstUnit a string',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: '1' as never }),
      'type',
      'ERR_INVALID_ARG_TYPE',
      `Expected ${FIRST_WHAT} for options.firstUnit but received a string of length 1`,
    ],
    [
      'firstUnit -1n',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: -1n }),
      'range',
      'ERR_XTS_UNIT_NUMBER',
      `Expected ${FIRST_WHAT} for options.firstUnit but received -1 of type bigint`,
    ],
    [
      'firstUnit 2^64',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: 2n ** 64n }),
      'range',
      'ERR_XTS_UNIT_NUMBER',
      `Expected ${FIRST_WHAT} for options.firstUnit but received 18446744073709551616 of type bigint`,
    ],
    [
      'last unit past 2^64-1',
      () => cipher.encrypt(data, { unitSize: 512, firstUnit: 2n ** 64n - 7n }),
      'range',
      'ERR_XTS_UNIT_NUMBER',
      'Expected a unit number of at most 18446744073709551608 (data holds 8 units) for options.firstUnit but received 18446744073709551609 of type bigint',
    ],
    [
      'out not a Uint8Array',
      () => cipher.encrypt(data, { unitSize: 512, out: [] as never }),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected a Uint8Array of at least 4096 bytes for options.out but received an array of length 0',
    ],
    [
      'out too small',
      () => cipher.encrypt(data, { unitSize: 512, out: new Uint8Array(4095) }),
      'range',
      'ERR_XTS_OUT_TOO_SMALL',
      'Expected a Uint8Array of at least 4096 bytes for options.out but received Uint8Array of length 4095',
    ],
    [
      'out overlapping data',
      () => cipher.encrypt(data.subarray(0, 2048), { unitSize: 512, out: data.subarray(16) }),
      'range',
      'ERR_XTS_OVERLAP',
      'Expected the same memory as data (in place) or memory that does not overlap it for options.out but received Buffer of length 4080',
    ],
  ];

  it.each(cases)('sync: %s', (_name, fn, kind, code, message) => {
    expectError(caught(fn), kind, code, message);
  });

  it.each(cases)('decrypt: %s', (_name, fn, kind, code, message) => {
    const original = cipher.encrypt;
    // The same checks guard decrypt: run each case with decrypt substituted.
    (cipher as { encrypt: unknown }).encrypt = cipher.decrypt;
    try {
      expectError(caught(fn), kind, code, message);
    } finally {
      (cipher as { encrypt: unknown }).encrypt = original;
    }
  });

  it.each(cases)('async rejects: %s', async (_name, fn, kind, code, message) => {
    (cipher as { encrypt: unknown }).encrypt = cipher.encryptAsync;
    try {
      let promise: unknown;
      expect(() => (promise = fn())).not.toThrow();
      expect(promise).toBeInstanceOf(Promise);
      expectError(await rejected(() => promise as Promise<unknown>), kind, code, message);
    } finally {
      delete (cipher as { encrypt?: unknown }).encrypt;
    }
  });

  it.each([
    [0, 'range', 'ERR_OUT_OF_RANGE', 'Expected an integer from 1 to 256 for options.threads but received 0 of type number'],
    [257, 'range', 'ERR_OUT_OF_RANGE', 'Expected an integer from 1 to 256 for options.threads but received 257 of type number'],
    [1.5, 'range', 'ERR_OUT_OF_RANGE', 'Expected an integer from 1 to 256 for options.threads but received 1.5 of type number'],
    ['2', 'type', 'ERR_INVALID_ARG_TYPE', 'Expected an integer from 1 to 256 for options.threads but received a string of length 1'],
  ] as const)('async rejects threads %s', async (threads, kind, code, message) => {
    expectError(await rejected(() => cipher.encryptAsync(data, { unitSize: 512, threads: threads as number })), kind, code, message);
    expectError(await rejected(() => cipher.decryptAsync(data, { unitSize: 512, threads: threads as number })), kind, code, message);
  });

  it('async refuses resizable buffers (they could shrink under the pool threads)', async () => {
    const resizable = new Uint8Array(new (ArrayBuffer as unknown as new (n: number, o: object) => ArrayBuffer)(1024, { maxByteLength: 4096 }));
    expectError(
      await rejected(() => cipher.encryptAsync(resizable, { unitSize: 512 })),
      'type',
      'ERR_INVALID_ARG_VALUE',
      'Expected a Uint8Array over a fixed-length buffer for data but received a resizable Uint8Array of length 1024',
    );
    expectError(
      await rejected(() => cipher.decryptAsync(new Uint8Array(1024), { unitSize: 512, out: resizable })),
      'type',
      'ERR_INVALID_ARG_VALUE',
      'Expected a Uint8Array over a fixed-length buffer for options.out but received a resizable Uint8Array of length 1024',
    );
    // The sync calls finish before JS can resize anything.
    expect(cipher.encrypt(resizable, { unitSize: 512, out: resizable })).toBe(resizable);
  });

  it('accepts an empty batch', async () => {
    expect(cipher.encrypt(new Uint8Array(0), { unitSize: 512 })).toHaveLength(0);
    expect(await cipher.decryptAsync(new Uint8Array(0), { unitSize: 512, firstUnit: 2n ** 64n - 1n })).toHaveLength(0);
  });
});

describe('one-unit calls', () => {
  const cipher = new XtsCipher(key64);
  const tweak = new Uint8Array(16);
  const DATA_WHAT = 'a Uint8Array of 16 to 1048576 bytes';
  it.each([
    [
      'data a string',
      () => cipher.encryptUnit('x' as never, tweak),
      'type',
      'ERR_INVALID_ARG_TYPE',
      `Expected ${DATA_WHAT} for data but received a string of length 1`,
    ],
    [
      'data of 15 bytes',
      () => cipher.encryptUnit(new Uint8Array(15), tweak),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${DATA_WHAT} for data but received Uint8Array of length 15`,
    ],
    [
      'data above 1 MiB',
      () => cipher.decryptUnit(new Uint8Array(2 ** 20 + 1), tweak),
      'range',
      'ERR_XTS_UNIT_SIZE',
      `Expected ${DATA_WHAT} for data but received Uint8Array of length 1048577`,
    ],
    [
      'tweak missing',
      () => cipher.encryptUnit(new Uint8Array(32), undefined as never),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected a Uint8Array of 16 bytes for tweak but received undefined',
    ],
    [
      'tweak of 8 bytes',
      () => cipher.decryptUnit(new Uint8Array(32), new Uint8Array(8)),
      'range',
      'ERR_XTS_TWEAK_LENGTH',
      'Expected a Uint8Array of 16 bytes for tweak but received Uint8Array of length 8',
    ],
    [
      'out too small',
      () => cipher.encryptUnit(new Uint8Array(32), tweak, new Uint8Array(31)),
      'range',
      'ERR_XTS_OUT_TOO_SMALL',
      'Expected a Uint8Array of at least 32 bytes for out but received Uint8Array of length 31',
    ],
    [
      'out a number',
      () => cipher.encryptUnit(new Uint8Array(32), tweak, 5 as never),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected a Uint8Array of at least 32 bytes for out but received 5 of type number',
    ],
  ] as const)('%s', (_name, fn, kind, code, message) => {
    expectError(caught(fn), kind, code, message);
  });
});

describe('disposed cipher and thread settings', () => {
  it('throws ERR_XTS_DISPOSED from every method after dispose()', async () => {
    const cipher = new XtsCipher(key64);
    cipher.dispose();
    cipher.dispose(); // idempotent
    const message = 'The XTS cipher has been disposed; create a new one';
    const data = new Uint8Array(512);
    for (const call of [
      () => cipher.encrypt(data, { unitSize: 512 }),
      () => cipher.decrypt(data, { unitSize: 512 }),
      () => cipher.encryptUnit(data, new Uint8Array(16)),
      () => cipher.decryptUnit(data, new Uint8Array(16)),
    ]) {
      expectError(caught(call), 'type', 'ERR_XTS_DISPOSED', message);
    }
    expectError(await rejected(() => cipher.encryptAsync(data, { unitSize: 512 })), 'type', 'ERR_XTS_DISPOSED', message);
    expectError(await rejected(() => cipher.decryptAsync(data, { unitSize: 512 })), 'type', 'ERR_XTS_DISPOSED', message);
  });

  it('rejects bad pool sizes', () => {
    const before = getXtsThreads();
    expectError(
      caught(() => setXtsThreads(0)),
      'range',
      'ERR_OUT_OF_RANGE',
      'Expected an integer from 1 to 256 for threads but received 0 of type number',
    );
    expectError(
      caught(() => setXtsThreads(null as never)),
      'type',
      'ERR_INVALID_ARG_TYPE',
      'Expected an integer from 1 to 256 for threads but received null',
    );
    expect(getXtsThreads()).toBe(before);
  });
});
