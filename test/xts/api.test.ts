// Behaviour of the XtsCipher API: outputs, in place, async = sync on any number of threads,
// disposal (also while async work runs), the feature report and the pool size.
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { XtsCipher, getXtsThreads, setXtsThreads, xtsInfo } from '../../src/xts/index.js';
import { implementations, referenceXts, unitTweak } from './helpers.js';

const key = randomBytes(64);

describe.each(implementations)('%s', (implementation) => {
  const cipher = new XtsCipher(key, { implementation });
  // The constant-time portable engine is far slower than the AES-instruction ones: less data.
  const slow = implementation === 'portable';
  afterAll(() => cipher.dispose());

  it('returns a new buffer without touching the input, or writes into out and returns it', () => {
    const data = randomBytes(8192);
    const copy = Buffer.from(data);
    const fresh = cipher.encrypt(data, { unitSize: 512, firstUnit: 3 });
    expect(fresh).not.toBe(data);
    expect(Buffer.from(data)).toEqual(copy);
    expect(Buffer.from(fresh)).toEqual(referenceXts(true, key, data, 512, 3n));

    const out = new Uint8Array(8192 + 100).fill(0xaa);
    expect(cipher.encrypt(data, { unitSize: 512, firstUnit: 3, out })).toBe(out);
    expect(Buffer.from(out.subarray(0, 8192))).toEqual(Buffer.from(fresh));
    expect(out.subarray(8192).every((b) => b === 0xaa)).toBe(true); // nothing past the data is written
  });

  it('in place (out === data) equals out of place, both directions, including views at odd offsets', () => {
    for (const unitSize of [512, 4096, 4097, 17]) {
      const backing = randomBytes(unitSize * 5 + 3);
      const data = backing.subarray(3); // not 16-byte aligned
      const expected = Buffer.from(cipher.encrypt(data, { unitSize, firstUnit: 2n ** 32n - 2n }));
      const plain = Buffer.from(data);
      expect(cipher.encrypt(data, { unitSize, firstUnit: 2n ** 32n - 2n, out: data })).toBe(data);
      expect(Buffer.from(data)).toEqual(expected);
      cipher.decrypt(data, { unitSize, firstUnit: 2n ** 32n - 2n, out: data });
      expect(Buffer.from(data)).toEqual(plain);
    }
  });

  it('firstUnit as a number and as a bigint give the same result', () => {
    const data = randomBytes(4096);
    const n = Number.MAX_SAFE_INTEGER - 8;
    expect(Buffer.from(cipher.encrypt(data, { unitSize: 512, firstUnit: n }))).toEqual(
      Buffer.from(cipher.encrypt(data, { unitSize: 512, firstUnit: BigInt(n) })),
    );
    expect(Buffer.from(cipher.encrypt(data, { unitSize: 512 }))).toEqual(Buffer.from(cipher.encrypt(data, { unitSize: 512, firstUnit: 0n })));
  });

  it('encryptUnit with the tweak of unit n equals unit n of a batch', () => {
    const data = randomBytes(4096 * 3);
    const batch = cipher.encrypt(data, { unitSize: 4096, firstUnit: 2n ** 63n });
    for (let i = 0; i < 3; i++) {
      const unit = cipher.encryptUnit(data.subarray(i * 4096, (i + 1) * 4096), unitTweak(2n ** 63n + BigInt(i)));
      expect(Buffer.from(unit)).toEqual(Buffer.from(batch.subarray(i * 4096, (i + 1) * 4096)));
    }
    const inPlace = Buffer.from(data.subarray(0, 4096));
    expect(cipher.encryptUnit(inPlace, unitTweak(2n ** 63n), inPlace)).toBe(inPlace);
    expect(inPlace).toEqual(Buffer.from(batch.subarray(0, 4096)));
  });

  it('async equals sync for 1 … N threads, out of place and in place', async () => {
    const maxThreads = slow ? 4 : Math.max(4, availableParallelism());
    // Odd unit counts so that chunks differ in size; > 64 KiB per chunk so every thread count splits.
    const shapes = slow
      ? ([
          [512, 4 * 128 + 3],
          [4100, 67],
        ] as const)
      : ([
          [512, 2 * 1024 + 3],
          [4096, 257],
          [4100, 131],
        ] as const);
    for (const [unitSize, units] of shapes) {
      const data = randomBytes(unitSize * units);
      const firstUnit = 2n ** 32n - 100n;
      const expected = Buffer.from(cipher.encrypt(data, { unitSize, firstUnit }));
      for (let threads = 1; threads <= maxThreads; threads++) {
        const out = await cipher.encryptAsync(data, { unitSize, firstUnit, threads });
        expect(Buffer.from(out).equals(expected), `${unitSize}×${units} on ${threads} threads`).toBe(true);
        const copy = Buffer.from(data);
        expect(await cipher.encryptAsync(copy, { unitSize, firstUnit, threads, out: copy })).toBe(copy);
        expect(copy.equals(expected)).toBe(true);
        const back = await cipher.decryptAsync(expected, { unitSize, firstUnit, threads });
        expect(Buffer.from(back).equals(data)).toBe(true);
      }
      // Default thread count.
      expect(Buffer.from(await cipher.encryptAsync(data, { unitSize, firstUnit })).equals(expected)).toBe(true);
    }
  });

  it('runs many async calls at once', async () => {
    const inputs = Array.from({ length: 24 }, (_, i) => randomBytes(512 * (1 + i * (slow ? 5 : 50))));
    const results = await Promise.all(inputs.map((d, i) => cipher.encryptAsync(d, { unitSize: 512, firstUnit: i * 1000, threads: 1 + (i % 3) })));
    inputs.forEach((d, i) => expect(Buffer.from(results[i]!).equals(Buffer.from(cipher.encrypt(d, { unitSize: 512, firstUnit: i * 1000 })))).toBe(true));
  });
});

describe('disposal', () => {
  it('supports Symbol.dispose and reports disposed', () => {
    const cipher = new XtsCipher(key);
    expect(cipher.disposed).toBe(false);
    cipher[Symbol.dispose]();
    expect(cipher.disposed).toBe(true);
    expect(() => cipher.encrypt(new Uint8Array(16), { unitSize: 16 })).toThrow(expect.objectContaining({ code: 'ERR_XTS_DISPOSED' }));
  });

  it('lets async work that is already running finish after dispose()', async () => {
    const cipher = new XtsCipher(key);
    const data = randomBytes(16 * 1024 * 1024);
    const expected = Buffer.from(cipher.encrypt(data, { unitSize: 4096 }));
    const pending = [1, 2, 3].map((threads) => cipher.encryptAsync(data, { unitSize: 4096, threads }));
    cipher.dispose();
    for (const result of await Promise.all(pending)) expect(Buffer.from(result).equals(expected)).toBe(true);
    await expect(cipher.encryptAsync(data, { unitSize: 4096 })).rejects.toMatchObject({ code: 'ERR_XTS_DISPOSED' });
  });

  it('keeps the engine alive while a garbage-collected cipher still has async work', async () => {
    const data = randomBytes(8 * 1024 * 1024);
    let cipher: XtsCipher | undefined = new XtsCipher(key);
    const expected = Buffer.from(cipher.encrypt(data, { unitSize: 512 }));
    const pending = cipher.encryptAsync(data, { unitSize: 512, threads: 2 });
    cipher = undefined;
    (globalThis as { gc?: () => void }).gc?.();
    expect(Buffer.from(await pending).equals(expected)).toBe(true);
  });
});

describe('xtsInfo and the thread pool', () => {
  it('reports the implementation, the available ones and CPU flags', () => {
    const info = xtsInfo();
    expect(info.available).toEqual(implementations);
    expect(info.available.at(-1)).toBe('portable');
    if (!process.env.VMSEAL_XTS_IMPL) expect(info.implementation).toBe(info.available[0]);
    expect(new XtsCipher(key).implementation).toBe(info.implementation);
    for (const flag of ['aes', 'pclmulqdq', 'avx2', 'vaes', 'vpclmulqdq', 'avx512f', 'osAvx', 'osAvx512']) expect(typeof info.cpu[flag]).toBe('boolean');
    if (info.available.includes('aesni')) expect(info.cpu.aes).toBe(true);
    if (info.available.includes('vaes-avx512')) expect(info.cpu.avx512f && info.cpu.vaes && info.cpu.osAvx512).toBe(true);
  });

  it('resizes the pool and keeps working', async () => {
    const before = getXtsThreads();
    expect(before).toBe(Math.min(256, availableParallelism()));
    const cipher = new XtsCipher(key);
    const data = randomBytes(4 * 1024 * 1024);
    const expected = Buffer.from(cipher.encrypt(data, { unitSize: 4096 }));
    try {
      for (const size of [1, 5, 2, 8, 1]) {
        setXtsThreads(size);
        expect(getXtsThreads()).toBe(size);
        expect(xtsInfo().threads).toBe(size);
        expect(Buffer.from(await cipher.encryptAsync(data, { unitSize: 4096, threads: 4 })).equals(expected)).toBe(true);
      }
    } finally {
      setXtsThreads(before);
    }
  });
});
