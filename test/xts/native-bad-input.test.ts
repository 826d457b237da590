// The raw .node module called directly, bypassing the TypeScript checks: every entry point with
// garbage of every type must throw a JS error with a `code` — never abort, crash or write out of
// bounds (this file also runs against the ASan/UBSan build, see scripts/test-sanitized.mjs).
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { loadNative, type NativeCipherHandle } from '../../src/xts/native.js';

const native = loadNative();
type Fn = (...args: unknown[]) => unknown;
const raw = native as unknown as Record<string, Fn>;

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(Error);
    const code = (err as { code?: unknown }).code;
    expect(typeof code).toBe('string');
    return code as string;
  }
  return 'no error';
}

const goodKey = randomBytes(64);
const garbage: unknown[] = [
  undefined,
  null,
  true,
  0,
  -1,
  1.5,
  NaN,
  Infinity,
  2 ** 64,
  -(2n ** 64n),
  2n ** 200n,
  '',
  'portable',
  'x'.repeat(10_000),
  Symbol('s'),
  {},
  [],
  [1, 2, 3],
  () => 1,
  new ArrayBuffer(64),
  new DataView(new ArrayBuffer(64)),
  new Uint16Array(32),
  new Float64Array(8),
  new Uint8ClampedArray(64),
  new Uint8Array(0),
  new Uint8Array(15),
  new Proxy(
    {},
    {
      get: () => {
        throw new Error('getter ran');
      },
    },
  ),
  Object.create(null),
];

describe('raw native module', () => {
  it('exports the documented functions and constants', () => {
    for (const name of [
      'createCipher',
      'dispose',
      'cipherInfo',
      'encrypt',
      'decrypt',
      'encryptAsync',
      'decryptAsync',
      'encryptUnit',
      'decryptUnit',
      'info',
      'setThreads',
      'getThreads',
    ]) {
      expect(typeof raw[name]).toBe('function');
    }
    expect([native.KEY_BYTES_128, native.KEY_BYTES_256, native.MIN_UNIT_SIZE, native.MAX_UNIT_SIZE, native.MAX_THREADS]).toEqual([32, 64, 16, 1048576, 256]);
  });

  it('createCipher refuses every garbage key and implementation', () => {
    for (const g of garbage) {
      expect(['ERR_INVALID_ARG_TYPE', 'ERR_XTS_KEY_LENGTH']).toContain(codeOf(() => raw.createCipher!(g)));
      if (g !== undefined) {
        expect(['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_XTS_IMPL_UNAVAILABLE', 'no error']).toContain(
          codeOf(() => raw.createCipher!(goodKey, g)),
        );
      }
    }
    expect(codeOf(() => raw.createCipher!(new Uint8Array(64)))).toBe('ERR_XTS_WEAK_KEY');
    expect(codeOf(() => raw.createCipher!(goodKey, 'portable\0'))).toBe('ERR_INVALID_ARG_VALUE');
  });

  it('every cipher function refuses garbage in every position', () => {
    const cipher = native.createCipher(goodKey);
    const data = randomBytes(1024);
    const out = Buffer.alloc(1024);
    const tweak = Buffer.alloc(16);
    const calls: Array<[string, unknown[]]> = [
      ['encrypt', [cipher, data, 512, 0, out]],
      ['decrypt', [cipher, data, 512, 0, out]],
      ['encryptUnit', [cipher, data, tweak, out]],
      ['decryptUnit', [cipher, data, tweak, out]],
    ];
    let errors = 0;
    for (const [name, good] of calls) {
      expect(codeOf(() => raw[name]!(...good))).toBe('no error');
      for (let position = 0; position < good.length; position++) {
        for (const g of garbage) {
          const args = [...good];
          args[position] = g;
          const code = codeOf(() => raw[name]!(...args));
          // A few garbage values are valid in some positions (e.g. 0 as firstUnit).
          if (code !== 'no error') errors++;
          expect(code).toMatch(/^(ERR_[A-Z_]+|no error)$/);
        }
      }
      // Missing arguments.
      for (let n = 0; n < good.length; n++) expect(codeOf(() => raw[name]!(...good.slice(0, n)))).toMatch(/^ERR_/);
    }
    expect(errors).toBeGreaterThan(300);
    // The wrong `this` or extra arguments do not matter: these are plain functions.
    expect(codeOf(() => raw.encrypt!.call({}, cipher, data, 512, 0, out, 'extra'))).toBe('no error');
    native.dispose(cipher);
  });

  it('async functions throw synchronously on garbage and never settle wrongly', async () => {
    const cipher = native.createCipher(goodKey);
    const data = randomBytes(1024);
    const out = Buffer.alloc(1024);
    const good: unknown[] = [cipher, data, 512, 0, out, 2];
    for (const name of ['encryptAsync', 'decryptAsync']) {
      await expect(raw[name]!(...good)).resolves.toBeUndefined();
      for (let position = 0; position < good.length; position++) {
        for (const g of garbage) {
          if (position === 5 && g === undefined) continue; // threads is optional
          const args = [...good];
          args[position] = g;
          let code = 'no error';
          try {
            await raw[name]!(...args);
          } catch (err) {
            code = (err as { code: string }).code;
          }
          expect(code).toMatch(/^(ERR_[A-Z_]+|no error)$/);
        }
      }
    }
    native.dispose(cipher);
  });

  it('names the exact error for each bound', () => {
    const cipher = native.createCipher(goodKey);
    const data = randomBytes(1024);
    const out = Buffer.alloc(1024);
    expect(codeOf(() => native.encrypt({} as NativeCipherHandle, data, 512, 0, out))).toBe('ERR_INVALID_ARG_TYPE');
    expect(codeOf(() => native.encrypt(cipher, data, 15, 0, out))).toBe('ERR_XTS_UNIT_SIZE');
    expect(codeOf(() => native.encrypt(cipher, data, 2 ** 20 + 16, 0, out))).toBe('ERR_XTS_UNIT_SIZE');
    expect(codeOf(() => native.encrypt(cipher, data, 1000, 0, out))).toBe('ERR_XTS_LENGTH');
    expect(codeOf(() => native.encrypt(cipher, data, 512, 0, out.subarray(1)))).toBe('ERR_XTS_OUT_TOO_SMALL');
    expect(codeOf(() => native.encrypt(cipher, data, 512, 0, data.subarray(16)))).toBe('ERR_XTS_OUT_TOO_SMALL');
    expect(codeOf(() => native.encrypt(cipher, data.subarray(0, 512), 512, 0, data.subarray(256)))).toBe('ERR_XTS_OVERLAP');
    expect(codeOf(() => native.encrypt(cipher, data, 512, 2 ** 53, out))).toBe('ERR_XTS_UNIT_NUMBER');
    expect(codeOf(() => native.encrypt(cipher, data, 512, -1n, out))).toBe('ERR_XTS_UNIT_NUMBER');
    expect(codeOf(() => native.encrypt(cipher, data, 512, 2n ** 64n, out))).toBe('ERR_XTS_UNIT_NUMBER');
    expect(codeOf(() => native.encrypt(cipher, data, 512, 2n ** 64n - 1n, out))).toBe('ERR_XTS_UNIT_NUMBER');
    expect(codeOf(() => native.encrypt(cipher, data, 512, 2n ** 64n - 2n, out))).toBe('no error');
    expect(codeOf(() => native.encryptUnit(cipher, data, data.subarray(0, 15), out))).toBe('ERR_XTS_TWEAK_LENGTH');
    expect(codeOf(() => native.encryptUnit(cipher, data.subarray(0, 15), data.subarray(0, 16), out))).toBe('ERR_XTS_UNIT_SIZE');
    // The tweak may alias the data or the output.
    expect(codeOf(() => native.encryptUnit(cipher, data, data.subarray(0, 16), data))).toBe('no error');
    expect(codeOf(() => native.setThreads(0))).toBe('ERR_OUT_OF_RANGE');
    expect(codeOf(() => native.setThreads('4' as never))).toBe('ERR_INVALID_ARG_TYPE');
    native.dispose(cipher);
    expect(codeOf(() => native.encrypt(cipher, data, 512, 0, out))).toBe('ERR_XTS_DISPOSED');
    expect(codeOf(() => native.encryptAsync(cipher, data, 512, 0, out))).toBe('ERR_XTS_DISPOSED');
    expect(codeOf(() => native.decryptUnit(cipher, data, data.subarray(0, 16), out))).toBe('ERR_XTS_DISPOSED');
    expect(codeOf(() => native.dispose(cipher))).toBe('no error');
    expect(native.cipherInfo(cipher)).toEqual({ implementation: native.info().best, keyBits: 256, disposed: true });
    expect(codeOf(() => native.dispose({} as NativeCipherHandle))).toBe('ERR_INVALID_ARG_TYPE');
    expect(codeOf(() => native.cipherInfo(null as never))).toBe('ERR_INVALID_ARG_TYPE');
  });

  it('reports features', () => {
    const info = native.info();
    expect(info.available).toContain('portable');
    expect(info.available[0]).toBe(info.best);
    expect(info.implementations).toEqual(['vaes-avx512', 'vaes-avx2', 'aesni', 'portable']);
    expect(typeof info.cpu.aes).toBe('boolean');
    expect(info.threads).toBe(native.getThreads());
  });
});
