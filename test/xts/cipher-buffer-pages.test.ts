// allocateCipherBuffer() must not touch the memory it hands out (issue 8 §4, throughput). Clearing
// it with memset on the JS thread faulted in every page there, serially, before any pool thread
// could start: the pipeline's async path ran at ~0.74× the pre-fix build with the pool half idle.
// Large buffers now come zero-filled from the kernel, and their pages are faulted in by whichever
// thread first writes them (the pool threads, in parallel). Counted in page faults, not time.
import { describe, expect, it } from 'vitest';
import { XtsCipher, allocateCipherBuffer } from '../../src/xts/index.js';

const PAGE = 4096;
const SIZE = 64 << 20;
const UNIT = 4096;
const key = Buffer.concat([Buffer.alloc(32, 3), Buffer.alloc(32, 4)]);

const minorFaults = (): number => process.resourceUsage().minorPageFault;

/** True if every byte at each page start and page end is zero (reading maps the zero page). */
function pagesZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += PAGE) if (buf[i] !== 0 || buf[Math.min(buf.length, i + PAGE) - 1] !== 0) return false;
  return true;
}

describe.runIf(process.platform === 'linux')('allocateCipherBuffer page placement', () => {
  it('does not fault in the pages of a large buffer on the calling thread', () => {
    const pages = SIZE / PAGE;
    const before = minorFaults();
    const buf = allocateCipherBuffer(SIZE);
    const faults = minorFaults() - before;
    // Old code: memset touched all 16384 pages here. Now only bookkeeping (the registry, the JS
    // object) may fault a few; a quarter of the pages is far above that and far below a clear.
    expect(faults).toBeLessThan(pages / 4);
    expect(buf.byteLength).toBe(SIZE);
    expect(pagesZero(buf)).toBe(true);
  });

  it('a buffer that reuses freed memory still reads as zeros, large and small', async () => {
    const cipher = new XtsCipher(key);
    try {
      for (const size of [SIZE, 1 << 20, 64 << 10, (64 << 10) - UNIT, UNIT]) {
        for (let round = 0; round < 3; round++) {
          const buf = allocateCipherBuffer(size);
          expect(pagesZero(buf)).toBe(true);
          if (size <= 1 << 20) expect(buf.every((b) => b === 0)).toBe(true);
          // Dirty it through the pool (in place on native memory), then let it go.
          buf.fill(0x5a);
          await cipher.encryptAsync(buf, { unitSize: UNIT, firstUnit: round, out: buf });
          expect(buf.subarray(0, UNIT).some((b) => b !== 0x5a)).toBe(true);
        }
      }
    } finally {
      cipher.dispose();
    }
  });
});
