// Where the grain-table entries of new grains are between a write and the flush: only in memory
// (the process reads the data, the file still says hole), written by flush() and close(), written at
// once for a grain deallocated before the flush, and written without a flush once too many are held.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, openDisk } from '../../src/vmdk/index.js';
import { GT_CACHE_BYTES, gtCacheSettings } from '../../src/vmdk/sparse-extent.js';
import { parseSparseHeader } from '../../src/vmdk/sparse-header.js';
import { tempDir } from './helpers.js';

const GRAIN = 4096; // a grain table of 512 entries covers 2 MiB
let tmp: ReturnType<typeof tempDir>;

beforeAll(() => {
  tmp = tempDir();
});
afterAll(() => tmp?.cleanup());

/** GD entry `t` and GT entry `e` of table `t` (0 when the table has none), and their redundant copies, as the file holds them. */
function onDisk(path: string, t: number, e: number): { gd: number; rgd: number; gte: number; rgte: number } {
  const file = readFileSync(path);
  const h = parseSparseHeader(file.subarray(0, 512), path, 0);
  const gd = file.readUInt32LE(h.gdOffset * 512 + t * 4);
  const rgd = file.readUInt32LE(h.rgdOffset * 512 + t * 4);
  return { gd, rgd, gte: gd ? file.readUInt32LE(gd * 512 + e * 4) : 0, rgte: rgd ? file.readUInt32LE(rgd * 512 + e * 4) : 0 };
}

describe('grain-table entries of new grains', () => {
  it('stay in memory until flush(), which writes both copies; reads and allocatedRanges see them before', async () => {
    const path = join(tmp.dir, 'flush.vmdk');
    const d = await createDisk(path, { capacity: 8 << 20, subformat: 'monolithicSparse', grainSize: GRAIN });
    try {
      const data = Buffer.alloc(GRAIN, 0x5a);
      await d.write(GRAIN, data); // table 0
      await d.write((2 << 20) + 3 * GRAIN, data); // table 1
      expect(onDisk(path, 0, 1).gte).toBe(0);
      expect(onDisk(path, 1, 3).gte).toBe(0);
      expect((await d.read(GRAIN, GRAIN)).equals(data)).toBe(true);
      expect((await d.read((2 << 20) + 3 * GRAIN, GRAIN)).equals(data)).toBe(true);
      const ranges = [];
      for await (const r of d.allocatedRanges()) ranges.push(r);
      expect(ranges).toEqual([
        { offset: GRAIN, length: GRAIN },
        { offset: (2 << 20) + 3 * GRAIN, length: GRAIN },
      ]);
      await d.flush();
      for (const [t, e] of [
        [0, 1],
        [1, 3],
      ]) {
        const s = onDisk(path, t, e);
        expect(s.gd).toBeGreaterThan(0);
        expect(s.rgd).toBeGreaterThan(0);
        expect(s.gte).toBeGreaterThan(1);
        expect(s.rgte).toBe(s.gte);
      }
    } finally {
      await d.close();
    }
  });

  it('are written by close(), so the disk reopens with the data', async () => {
    const path = join(tmp.dir, 'close.vmdk');
    const d = await createDisk(path, { capacity: 8 << 20, subformat: 'monolithicSparse', grainSize: GRAIN });
    await d.write(5 * GRAIN, Buffer.alloc(100, 0x33));
    await d.close();
    expect(onDisk(path, 0, 5).gte).toBeGreaterThan(1);
    const again = await openDisk(path, { readOnly: true });
    try {
      expect((await again.read(5 * GRAIN, 100)).equals(Buffer.alloc(100, 0x33))).toBe(true);
    } finally {
      await again.close();
    }
  });

  it('of a grain deallocated before the flush: the hole is written, the other unwritten entries keep their old value', async () => {
    const path = join(tmp.dir, 'dealloc.vmdk');
    const d = await createDisk(path, { capacity: 8 << 20, subformat: 'monolithicSparse', grainSize: GRAIN });
    try {
      await d.write(0, Buffer.alloc(4 * GRAIN, 0x77)); // grains 0..3, entries unwritten
      await d.flush();
      const committed = onDisk(path, 0, 1).gte;
      expect(committed).toBeGreaterThan(1);
      await d.write(6 * GRAIN, Buffer.alloc(GRAIN, 0x11)); // grain 6 unwritten
      await d.write(8 * GRAIN, Buffer.alloc(GRAIN, 0x22)); // grain 8 unwritten
      // Frees grains 1 and 6..7: the span written covers 1..6, where grain 6's entry is still unwritten.
      expect(await d.deallocate(GRAIN, GRAIN)).toEqual([{ offset: GRAIN, length: GRAIN }]);
      expect(await d.deallocate(6 * GRAIN, 2 * GRAIN)).toEqual([{ offset: 6 * GRAIN, length: GRAIN }]);
      expect(onDisk(path, 0, 1).gte).toBe(0);
      expect(onDisk(path, 0, 6).gte).toBe(0);
      expect(onDisk(path, 0, 8).gte).toBe(0); // still unwritten
      expect((await d.read(6 * GRAIN, GRAIN)).equals(Buffer.alloc(GRAIN))).toBe(true);
      await d.flush();
      expect(onDisk(path, 0, 6).gte).toBe(0);
      expect(onDisk(path, 0, 8).gte).toBeGreaterThan(1);
      expect(onDisk(path, 0, 8).rgte).toBe(onDisk(path, 0, 8).gte);
    } finally {
      await d.close();
    }
  });

  it('are written without a flush once more tables hold them than half the table cache', async () => {
    gtCacheSettings.bytes = 4 * 2048; // 4 tables of 512 entries: a commit when more than 2 hold unwritten entries
    try {
      const path = join(tmp.dir, 'bound.vmdk');
      const d = await createDisk(path, { capacity: 16 << 20, subformat: 'monolithicSparse', grainSize: GRAIN });
      try {
        for (let t = 0; t < 3; t++) await d.write(t * (2 << 20), Buffer.alloc(GRAIN, 0x40 + t));
        for (let t = 0; t < 3; t++) expect(onDisk(path, t, 0).gte, `table ${t}`).toBeGreaterThan(1);
        for (let t = 0; t < 3; t++) expect((await d.read(t * (2 << 20), GRAIN)).equals(Buffer.alloc(GRAIN, 0x40 + t))).toBe(true);
      } finally {
        await d.close();
      }
    } finally {
      gtCacheSettings.bytes = GT_CACHE_BYTES;
    }
  });
});
