// A failure that surfaces later from the thread pool (the native promise rejects) keeps the stack
// of the call site and gets the layer's error class. The native side is stubbed to reject, as it
// only does so when its thread shuts down.
import { describe, expect, it, vi } from 'vitest';

vi.mock('../../src/xts/native.js', async (importOriginal) => {
  const original = await importOriginal<typeof import('../../src/xts/native.js')>();
  const real = original.loadNative();
  const failing = {
    ...real,
    encryptAsync: () => Promise.reject(Object.assign(new Error('The XTS thread pool did not run the work'), { code: 'ERR_XTS_CANCELLED' })),
  };
  return { ...original, loadNative: () => failing };
});

const { XtsCipher, XtsError } = await import('../../src/xts/index.js');

describe('async rejections', () => {
  it('carry the code, the XtsError class and the stack of the call site', async function callSiteMarker() {
    const cipher = new XtsCipher(Buffer.alloc(64).fill(1, 32));
    let error: (Error & { code?: string }) | undefined;
    try {
      await cipher.encryptAsync(new Uint8Array(512), { unitSize: 512 });
    } catch (err) {
      error = err as Error & { code?: string };
    }
    expect(error).toBeInstanceOf(XtsError);
    expect(error?.code).toBe('ERR_XTS_CANCELLED');
    expect(error?.message).toBe('The XTS thread pool did not run the work');
    expect(error?.stack).toContain('--- called from ---');
    expect(error?.stack?.split('--- called from ---')[1]).toContain('async-stack.test.ts');
    // decryptAsync is the real native one: unaffected.
    await expect(cipher.decryptAsync(new Uint8Array(512), { unitSize: 512 })).resolves.toHaveLength(512);
  });
});
