// Memory safety of the async calls (issue "Nothing lost, nobody in", §4): whatever the caller does
// to its ArrayBuffer while the thread pool works (transfer it away, shrink it), nothing is written
// to memory JavaScript gave up. Either the result is correct or the promise rejects with a typed
// error. Runs under AddressSanitizer too (scripts/test-sanitized.mjs): before the fix these were
// heap-use-after-free reports and segfaults.
import { randomBytes } from 'node:crypto';
import { MessageChannel } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { XtsCipher, XtsError, allocateCipherBuffer } from '../../src/xts/index.js';
import { loadNative } from '../../src/xts/native.js';

const UNIT = 4096;
// Large enough that the pool splits the work and is still running when the caller acts.
const SIZE = 8 << 20;
const key = Buffer.concat([Buffer.alloc(32, 1), Buffer.alloc(32, 2)]);

type Direction = 'encrypt' | 'decrypt';

/** ES2024 resizable ArrayBuffer (Node 20 has it; this project's TypeScript lib predates it). */
interface ResizableArrayBuffer extends ArrayBuffer {
  resize(byteLength: number): void;
}
function resizable(byteLength: number, maxByteLength: number): ResizableArrayBuffer {
  const Ctor = ArrayBuffer as unknown as new (n: number, o: { maxByteLength: number }) => ResizableArrayBuffer;
  return new Ctor(byteLength, { maxByteLength });
}

/** The ArrayBuffer under a view made here (never a SharedArrayBuffer). */
const ab = (view: Uint8Array): ArrayBuffer => view.buffer as ArrayBuffer;

function expected(cipher: XtsCipher, direction: Direction, plain: Uint8Array): Uint8Array {
  return direction === 'encrypt' ? cipher.encrypt(plain, { unitSize: UNIT, firstUnit: 7 }) : cipher.decrypt(plain, { unitSize: UNIT, firstUnit: 7 });
}

function start(cipher: XtsCipher, direction: Direction, data: Uint8Array, out: Uint8Array): Promise<Uint8Array> {
  return direction === 'encrypt'
    ? cipher.encryptAsync(data, { unitSize: UNIT, firstUnit: 7, out })
    : cipher.decryptAsync(data, { unitSize: UNIT, firstUnit: 7, out });
}

/** Resolves to the output or to the rejection; a rejection must be a typed XtsError with a code. */
async function settle(p: Promise<Uint8Array>): Promise<{ ok: true; out: Uint8Array } | { ok: false; code: string }> {
  try {
    return { ok: true, out: await p };
  } catch (err) {
    expect(err).toBeInstanceOf(XtsError);
    return { ok: false, code: (err as { code: string }).code };
  }
}

const detachers: Record<string, (ab: ArrayBuffer) => void> = {
  structuredClone: (ab) => void structuredClone(ab, { transfer: [ab] }),
  postMessage: (ab) => {
    const { port1, port2 } = new MessageChannel();
    port1.postMessage(ab, [ab]);
    port1.close();
    port2.close();
  },
};

describe.each(['encrypt', 'decrypt'] as const)('%sAsync with a caller buffer taken away mid-call', (direction) => {
  const cipher = new XtsCipher(key);

  for (const [how, detach] of Object.entries(detachers)) {
    it(`in place, ArrayBuffer transferred by ${how}: rejects ERR_XTS_DETACHED, nothing written`, async () => {
      const buf = new Uint8Array(randomBytes(SIZE));
      const pending = start(cipher, direction, buf, buf);
      detach(ab(buf));
      expect(buf.byteLength).toBe(0);
      const result = await settle(pending);
      expect(result).toEqual({ ok: false, code: 'ERR_XTS_DETACHED' });
    });

    it(`data transferred by ${how}, separate out: correct output from the copy taken at the call`, async () => {
      const plain = randomBytes(SIZE);
      const data = new Uint8Array(plain);
      const out = new Uint8Array(SIZE);
      const pending = start(cipher, direction, data, out);
      detach(ab(data));
      const result = await settle(pending);
      expect(result.ok).toBe(true);
      expect(Buffer.from(out).equals(Buffer.from(expected(cipher, direction, plain)))).toBe(true);
    });

    it(`out transferred by ${how}: rejects ERR_XTS_DETACHED`, async () => {
      const data = new Uint8Array(randomBytes(SIZE));
      const out = new Uint8Array(SIZE);
      const pending = start(cipher, direction, data, out);
      detach(ab(out));
      expect(await settle(pending)).toEqual({ ok: false, code: 'ERR_XTS_DETACHED' });
    });
  }

  // XtsCipher refuses resizable buffers for async calls up front (ERR_INVALID_ARG_VALUE); the addon
  // can be called directly, so it must survive them itself.
  it('XtsCipher refuses a resizable ArrayBuffer with a typed error', async () => {
    const buf = new Uint8Array(resizable(SIZE, 2 * SIZE));
    expect(await settle(start(cipher, direction, buf, buf))).toEqual({ ok: false, code: 'ERR_INVALID_ARG_VALUE' });
  });

  const native = loadNative();
  const handle = native.createCipher(key);
  const startNative = (data: Uint8Array, out: Uint8Array): Promise<Uint8Array> =>
    (direction === 'encrypt' ? native.encryptAsync : native.decryptAsync)(handle, data, UNIT, 7, out).then(
      () => out,
      (err: unknown) => Promise.reject(new XtsError((err as { code: string }).code, (err as Error).message)),
    );

  it('addon: resizable ArrayBuffer shrunk mid-call (length-tracking view): rejects ERR_XTS_RESIZED', async () => {
    const ab = resizable(SIZE, SIZE);
    const buf = new Uint8Array(ab);
    buf.set(randomBytes(SIZE));
    const pending = startNative(buf, buf);
    ab.resize(UNIT);
    expect(await settle(pending)).toEqual({ ok: false, code: 'ERR_XTS_RESIZED' });
  });

  it('addon: resizable ArrayBuffer shrunk mid-call (fixed-length view, now out of bounds): rejects ERR_XTS_RESIZED', async () => {
    const ab = resizable(SIZE, 2 * SIZE);
    const buf = new Uint8Array(ab, 0, SIZE);
    buf.set(randomBytes(SIZE));
    const pending = startNative(buf, buf);
    ab.resize(0);
    expect(await settle(pending)).toEqual({ ok: false, code: 'ERR_XTS_RESIZED' });
  });

  it('addon: resizable ArrayBuffer grown mid-call: correct output', async () => {
    const plain = randomBytes(SIZE);
    const ab = resizable(SIZE, 2 * SIZE);
    const buf = new Uint8Array(ab);
    buf.set(plain);
    const pending = startNative(buf, buf);
    ab.resize(2 * SIZE);
    const result = await settle(pending);
    expect(result.ok).toBe(true);
    expect(Buffer.from(buf.subarray(0, SIZE)).equals(Buffer.from(expected(cipher, direction, plain)))).toBe(true);
  });

  it('many calls racing transfers: never a crash, only correct output or a typed error', async () => {
    const runs = Array.from({ length: 16 }, async (_, i) => {
      const buf = new Uint8Array(randomBytes(1 << 20));
      const pending = start(cipher, direction, buf, buf);
      if (i % 2 === 0) structuredClone(ab(buf), { transfer: [ab(buf)] });
      return settle(pending);
    });
    const results = await Promise.all(runs);
    results.forEach((r, i) => expect(r.ok).toBe(i % 2 !== 0));
  });
});

describe('allocateCipherBuffer', () => {
  const cipher = new XtsCipher(key);

  it('returns a zero-filled Buffer that cannot be transferred or detached', () => {
    const buf = allocateCipherBuffer(1 << 20);
    expect(Buffer.isBuffer(buf)).toBe(true);
    expect(buf.byteLength).toBe(1 << 20);
    expect(buf.every((b) => b === 0)).toBe(true);
    buf.fill(0xab);
    // Node 20 copies an untransferable ArrayBuffer instead of transferring it; newer Node throws
    // DataCloneError. Either way the original stays attached with its contents.
    try {
      const copy = structuredClone(ab(buf), { transfer: [ab(buf)] });
      expect(copy).not.toBe(ab(buf));
    } catch (err) {
      expect((err as Error).name).toBe('DataCloneError');
    }
    const { port1, port2 } = new MessageChannel();
    try {
      port1.postMessage(ab(buf), [ab(buf)]);
    } catch (err) {
      expect((err as Error).name).toBe('DataCloneError');
    } finally {
      port1.close();
      port2.close();
    }
    expect(buf.byteLength).toBe(1 << 20);
    expect(buf.every((b) => b === 0xab)).toBe(true);
  });

  it('survives ArrayBuffer.prototype.transfer during async work where Node has it (Node ≥ 22)', async () => {
    const transfer = (ArrayBuffer.prototype as { transfer?: (this: ArrayBuffer) => ArrayBuffer }).transfer;
    if (!transfer) return;
    const buf = allocateCipherBuffer(SIZE);
    const pending = start(cipher, 'encrypt', buf, buf);
    try {
      transfer.call(ab(buf));
    } catch {
      // refused: the buffer stays attached, which is the expected outcome
    }
    // The addon holds the memory until the work is done, whatever happened to the ArrayBuffer.
    await settle(pending);
  });

  it('refuses bad sizes with typed errors', () => {
    expect(() => allocateCipherBuffer(-1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => allocateCipherBuffer(1.5)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => allocateCipherBuffer('1' as unknown as number)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(allocateCipherBuffer(0).byteLength).toBe(0);
  });

  it.each(['encrypt', 'decrypt'] as const)('%sAsync in place on it, transfer attempted mid-call: same result as the sync path', async (direction) => {
    const plain = randomBytes(SIZE);
    const buf = allocateCipherBuffer(SIZE);
    plain.copy(buf);
    const pending = start(cipher, direction, buf, buf);
    try {
      structuredClone(ab(buf), { transfer: [ab(buf)] });
    } catch {
      // newer Node: DataCloneError; the point is that the buffer stays ours
    }
    const result = await settle(pending);
    expect(result.ok).toBe(true);
    expect(buf.equals(expected(cipher, direction, plain))).toBe(true);
  });

  it('mixes with caller buffers: native data → caller out, caller data → native out, subarray views', async () => {
    const plain = randomBytes(SIZE);
    const want = Buffer.from(expected(cipher, 'encrypt', plain));
    const nativeIn = allocateCipherBuffer(SIZE + UNIT);
    plain.copy(nativeIn, UNIT);
    const callerOut = new Uint8Array(SIZE);
    await cipher.encryptAsync(nativeIn.subarray(UNIT), { unitSize: UNIT, firstUnit: 7, out: callerOut });
    expect(Buffer.from(callerOut).equals(want)).toBe(true);
    const nativeOut = allocateCipherBuffer(SIZE);
    await cipher.encryptAsync(new Uint8Array(plain), { unitSize: UNIT, firstUnit: 7, out: nativeOut });
    expect(nativeOut.equals(want)).toBe(true);
    const fresh = await cipher.encryptAsync(new Uint8Array(plain), { unitSize: UNIT, firstUnit: 7 });
    expect(Buffer.from(fresh).equals(want)).toBe(true);
  });
});

describe('the addon itself refuses detached buffers', () => {
  const native = loadNative();
  const handle = native.createCipher(key);
  const detached = (): Uint8Array => {
    const u = new Uint8Array(UNIT);
    structuredClone(ab(u), { transfer: [ab(u)] });
    return u;
  };

  it.each([
    ['encrypt', () => native.encrypt(handle, detached(), UNIT, 0, new Uint8Array(UNIT))],
    ['decrypt out', () => native.decrypt(handle, new Uint8Array(UNIT), UNIT, 0, detached())],
    ['encryptUnit', () => native.encryptUnit(handle, detached(), new Uint8Array(16), new Uint8Array(UNIT))],
    ['encryptAsync', () => native.encryptAsync(handle, detached(), UNIT, 0, new Uint8Array(UNIT))],
    ['decryptAsync out', () => native.decryptAsync(handle, new Uint8Array(UNIT), UNIT, 0, detached())],
  ])('%s: TypeError ERR_XTS_DETACHED', (_, call) => {
    expect(call).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_XTS_DETACHED' }));
  });
});
