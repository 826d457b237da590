// transferChunk (native/fs_transfer.cc), the copy jobs' one native job per chunk: pread → XTS in
// place → pwrite on libuv's pool. Real files; the raw addon is called directly for its argument
// checks (garbage must throw a coded error synchronously, never crash) and its errno paths.
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { XtsCipher, allocateCipherBuffer } from '../../src/xts/index.js';
import { loadNative } from '../../src/xts/native.js';
import { runTransfer, transferAvailable, transferMaxBytes } from '../../src/xts/transfer.js';

type Fn = (...args: unknown[]) => unknown;
const raw = loadNative() as unknown as Record<string, Fn>;

let dir: string;
let inPath: string;
let outPath: string;
const source = randomBytes(3 << 20);

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-transfer-'));
  inPath = join(dir, 'in');
  outPath = join(dir, 'out');
  writeFileSync(inPath, source);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Open the input read-only and a new output, run `fn`, close both. */
async function withFiles<T>(fn: (fdIn: number, fdOut: number) => Promise<T>): Promise<T> {
  const fdIn = openSync(inPath, 'r');
  const fdOut = openSync(outPath, 'w+');
  try {
    return await fn(fdIn, fdOut);
  } finally {
    closeSync(fdIn);
    closeSync(fdOut);
  }
}

/** Calls that were accepted: awaited before their files are closed (a late pwrite must not hit a reused fd). */
const started: Array<Promise<unknown>> = [];

function codeOf(fn: () => unknown): string {
  try {
    const r = fn();
    if (r instanceof Promise) started.push(r.catch(() => undefined));
  } catch (err) {
    return String((err as { code?: unknown }).code);
  }
  return 'no error';
}

describe('transferChunk', () => {
  it('is in the addon, with its bound', () => {
    expect(transferAvailable()).toBe(true);
    expect(transferMaxBytes()).toBe(64 << 20);
  });

  it('copies a chunk as it is, between two positions', async () => {
    const buf = allocateCipherBuffer(1 << 20);
    const n = await withFiles((fdIn, fdOut) => runTransfer({ fdIn, positionIn: 4096, buffer: buf, fdOut, positionOut: 512 }));
    expect(n).toBe(1 << 20);
    const out = readFileSync(outPath);
    expect(out.length).toBe(512 + (1 << 20));
    expect(out.subarray(512).equals(source.subarray(4096, 4096 + (1 << 20)))).toBe(true);
  });

  it('encrypts in place as XtsCipher does (several internal steps), and decrypts back', async () => {
    const cipher = new XtsCipher(randomBytes(64));
    const length = (2 << 20) + 4096;
    const buf = allocateCipherBuffer(length);
    const n = await withFiles((fdIn, fdOut) =>
      cipher.transferChunk({ fdIn, positionIn: 0, buffer: buf, fdOut, positionOut: 0 }, { unitSize: 512, firstUnit: 77 }),
    );
    expect(n).toBe(length);
    const want = cipher.encrypt(source.subarray(0, length), { unitSize: 512, firstUnit: 77 });
    expect(readFileSync(outPath).equals(Buffer.from(want))).toBe(true);
    // Back: the output decrypted into a third file is the input.
    const back = join(dir, 'back');
    const fdIn = openSync(outPath, 'r');
    const fdOut = openSync(back, 'w+');
    try {
      await cipher.transferChunk({ fdIn, positionIn: 0, buffer: buf, fdOut, positionOut: 0 }, { unitSize: 512, firstUnit: 77, decrypt: true });
    } finally {
      closeSync(fdIn);
      closeSync(fdOut);
    }
    expect(readFileSync(back).equals(source.subarray(0, length))).toBe(true);
    cipher.dispose();
  });

  it('resolves the bytes there were when the input ends first, and writes nothing', async () => {
    const buf = allocateCipherBuffer(65536);
    const n = await withFiles((fdIn, fdOut) => runTransfer({ fdIn, positionIn: source.length - 1000, buffer: buf, fdOut, positionOut: 0 }));
    expect(n).toBe(1000);
    expect(readFileSync(outPath).length).toBe(0);
  });

  it('rejects a failed pread or pwrite with ERR_TRANSFER_IO, the errno and the call', async () => {
    const buf = allocateCipherBuffer(4096);
    const fdIn = openSync(inPath, 'r');
    try {
      // The input is open read-only: writing to it fails with EBADF.
      await expect(runTransfer({ fdIn, positionIn: 0, buffer: buf, fdOut: fdIn, positionOut: 0 })).rejects.toMatchObject({
        code: 'ERR_TRANSFER_IO',
        errno: 9,
        syscall: 'pwrite',
      });
      const full = openSync('/dev/full', 'w');
      try {
        await expect(runTransfer({ fdIn, positionIn: 0, buffer: buf, fdOut: full, positionOut: 0 })).rejects.toMatchObject({
          code: 'ERR_TRANSFER_IO',
          errno: 28,
          syscall: 'pwrite',
          message: expect.stringMatching(/^pwrite failed: No space left on device/),
        });
      } finally {
        closeSync(full);
      }
    } finally {
      closeSync(fdIn);
    }
    // A closed descriptor: the read fails.
    const closed = openSync(inPath, 'r');
    closeSync(closed);
    await expect(runTransfer({ fdIn: closed, positionIn: 0, buffer: buf, fdOut: closed, positionOut: 0 })).rejects.toMatchObject({
      code: 'ERR_TRANSFER_IO',
      errno: 9,
      syscall: 'pread',
    });
  });

  it('refuses bad arguments synchronously with a code, and never memory JavaScript owns', async () => {
    const native = loadNative();
    const cipher = native.createCipher(randomBytes(64));
    const buf = allocateCipherBuffer(4096);
    const fdIn = openSync(inPath, 'r');
    const fdOut = openSync(outPath, 'w+');
    try {
      const good: unknown[] = [fdIn, 0, buf, fdOut, 0, cipher, 512, 0, false];
      await expect(raw.transferChunk!(...good)).resolves.toBe(4096);
      const garbage: unknown[] = [undefined, null, -1, 1.5, NaN, 2 ** 64, 'x', {}, [], new Uint8Array(16), Buffer.alloc(4096), 10n];
      let refused = 0;
      for (let position = 0; position < good.length; position++) {
        for (const g of garbage) {
          const args = [...good];
          args[position] = g;
          const code = codeOf(() => raw.transferChunk!(...args));
          if (code !== 'no error') refused++;
          expect(code).toMatch(/^(ERR_[A-Z_]+|no error)$/);
        }
      }
      expect(refused).toBeGreaterThan(60);
      // Memory from the JavaScript heap: a pool thread must never work on it.
      expect(codeOf(() => raw.transferChunk!(fdIn, 0, Buffer.alloc(4096), fdOut, 0))).toBe('ERR_INVALID_ARG_VALUE');
      expect(codeOf(() => raw.transferChunk!(fdIn, 0, allocateCipherBuffer(1000), fdOut, 0, cipher, 512, 0))).toBe('ERR_XTS_LENGTH');
      expect(codeOf(() => raw.transferChunk!(fdIn, 2 ** 53 - 100, buf, fdOut, 0))).toBe('ERR_OUT_OF_RANGE');
      expect(codeOf(() => raw.transferChunk!(fdIn, 0, buf, fdOut, 0, cipher, 512, 2n ** 64n - 2n))).toBe('ERR_OUT_OF_RANGE');
      // A second cipher (re-encryption): its arguments are checked the same way, and it needs decrypt true.
      const cipher2 = native.createCipher(randomBytes(64));
      const good2: unknown[] = [fdIn, 0, buf, fdOut, 0, cipher, 512, 0, true, cipher2, 4096, 0];
      await expect(raw.transferChunk!(...good2)).resolves.toBe(4096);
      for (let position = 9; position < good2.length; position++) {
        for (const g of garbage) {
          const args = [...good2];
          args[position] = g;
          expect(codeOf(() => raw.transferChunk!(...args))).toMatch(/^(ERR_[A-Z_]+|no error)$/);
        }
      }
      expect(codeOf(() => raw.transferChunk!(fdIn, 0, buf, fdOut, 0, cipher, 512, 0, false, cipher2, 4096, 0))).toBe('ERR_INVALID_ARG_TYPE');
      expect(codeOf(() => raw.transferChunk!(fdIn, 0, allocateCipherBuffer(2048), fdOut, 0, cipher, 512, 0, true, cipher2, 4096, 0))).toBe('ERR_XTS_LENGTH');
      expect(codeOf(() => raw.transferChunk!(fdIn, 0, buf, fdOut, 0, cipher, 512, 0, true, cipher2, 512, 2n ** 64n - 2n))).toBe('ERR_OUT_OF_RANGE');
      native.dispose(cipher2);
      expect(codeOf(() => raw.transferChunk!(...good2))).toBe('ERR_XTS_DISPOSED');
      native.dispose(cipher);
      expect(codeOf(() => raw.transferChunk!(...good))).toBe('ERR_XTS_DISPOSED');
    } finally {
      await Promise.allSettled(started.splice(0));
      closeSync(fdIn);
      closeSync(fdOut);
    }
  });

  it('refuses a buffer longer than TRANSFER_MAX_BYTES', () => {
    const big = allocateCipherBuffer((64 << 20) + 4096);
    expect(codeOf(() => raw.transferChunk!(0, 0, big, 1, 0))).toBe('ERR_OUT_OF_RANGE');
  });
});
