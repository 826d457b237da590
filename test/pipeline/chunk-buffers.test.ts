// Chunk buffers outlive a job for a moment so that the next job of the process reuses them
// (src/pipeline/chunk-buffers.ts). A reused buffer still holds the previous image's bytes: the
// jobs must only ever see what they read into it themselves.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { giveChunkBuffers, takeChunkBuffer } from '../../src/pipeline/chunk-buffers.js';
import { convertDisk, decryptDisk, encryptDisk } from '../../src/pipeline/index.js';
import { openDisk } from '../../src/vmdk/index.js';
import { patternBytes, phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { plainHash } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;

beforeAll(() => {
  tmp = tempDir('vmseal-chunkbuf-');
});
afterAll(() => tmp.cleanup());

describe('chunk buffers shared by the jobs of a process', () => {
  it('gives a returned buffer of the same size to the next taker, and a new one for another size', () => {
    const a = takeChunkBuffer(64 * 1024);
    giveChunkBuffers([a]);
    expect(takeChunkBuffer(128 * 1024)).not.toBe(a);
    expect(takeChunkBuffer(64 * 1024)).toBe(a);
    expect(takeChunkBuffer(64 * 1024)).not.toBe(a);
  });

  it('keeps at most 16 idle buffers', () => {
    const size = 4096 * 3;
    const many = Array.from({ length: 20 }, () => takeChunkBuffer(size));
    giveChunkBuffers(many);
    const again = Array.from({ length: 20 }, () => takeChunkBuffer(size));
    expect(again.filter((b) => many.includes(b))).toHaveLength(16);
  });

  it('a job after a bigger one sees none of its bytes: outputs read back exactly, zeros stay holes', async () => {
    // One chunk per image (the default chunk is larger than both), so the second job reuses the first one's buffer.
    const big = patternBytes(3 * MiB, 71);
    const small = Buffer.alloc(2 * MiB);
    patternBytes(100_000, 72).copy(small, 512 * 1024);
    writeFileSync(join(tmp.dir, 'big.raw'), big);
    writeFileSync(join(tmp.dir, 'small.raw'), small);
    await encryptDisk(join(tmp.dir, 'big.raw'), join(tmp.dir, 'big.vmdk'), { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    await encryptDisk(join(tmp.dir, 'small.raw'), join(tmp.dir, 'small.vmdk'), { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    expect(await plainHash(join(tmp.dir, 'small.vmdk'), 'pw')).toBe(sha256(small));
    await convertDisk(join(tmp.dir, 'small.raw'), join(tmp.dir, 'small-plain.vmdk'), { subformat: 'monolithicSparse' });
    const plain = await openDisk(join(tmp.dir, 'small-plain.vmdk'));
    try {
      expect(sha256(await plain.read(0, plain.capacity))).toBe(sha256(small));
      // Only the grains with data were written: the zeros before and after are holes.
      let allocated = 0;
      for await (const r of plain.allocatedRanges()) allocated += r.length;
      expect(allocated).toBeLessThanOrEqual(256 * 1024);
    } finally {
      await plain.close();
    }
    await decryptDisk(join(tmp.dir, 'small.vmdk'), join(tmp.dir, 'small-back.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw' });
    expect(sha256(readFileSync(join(tmp.dir, 'small-back.raw')))).toBe(sha256(small));
    expect(await plainHash(join(tmp.dir, 'big.vmdk'), 'pw')).toBe(sha256(big));
  });
});
