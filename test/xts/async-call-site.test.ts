// A real failure of an async XTS call (the caller's output buffer transferred away while the pool
// works: ERR_XTS_DETACHED) names, after "--- called from ---", the functions that awaited the call,
// down to the caller's caller: the call site is captured when the call fails (src/xts/cipher.ts),
// not at every call, and must stay as useful as a stack captured at the call.
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { XtsCipher, XtsError } from '../../src/xts/index.js';

const SIZE = 8 << 20; // large enough that the pool is still working when the buffer goes
const cipher = new XtsCipher(Buffer.concat([Buffer.alloc(32, 1), Buffer.alloc(32, 2)]));

async function encryptIntoTransferredBuffer(): Promise<Uint8Array> {
  const out = new Uint8Array(SIZE);
  const pending = cipher.encryptAsync(new Uint8Array(randomBytes(SIZE)), { unitSize: 4096, out });
  structuredClone(out.buffer, { transfer: [out.buffer] });
  return await pending;
}

async function outerCallerOfTheCipher(): Promise<Uint8Array> {
  return await encryptIntoTransferredBuffer();
}

describe('an async call that fails on the thread pool', () => {
  it('rejects with its code and a stack naming the functions that awaited it', async () => {
    const error = await outerCallerOfTheCipher().then(
      () => undefined,
      (err: unknown) => err as XtsError,
    );
    expect(error).toBeInstanceOf(XtsError);
    expect(error?.code).toBe('ERR_XTS_DETACHED');
    const [own, callers] = (error?.stack ?? '').split('\n    --- called from ---\n');
    expect(own).toMatch(/^XtsTypeError: |^XtsError: |^XtsRangeError: /);
    expect(callers).toContain('encryptIntoTransferredBuffer');
    expect(callers).toContain('outerCallerOfTheCipher');
    expect(callers).toContain('async-call-site.test.ts');
  });

  it('leaves a successful call its result', async () => {
    const data = new Uint8Array(randomBytes(1 << 20));
    const expected = cipher.encrypt(data, { unitSize: 4096 });
    expect(Buffer.from(await cipher.encryptAsync(data, { unitSize: 4096 })).equals(Buffer.from(expected))).toBe(true);
  });
});
