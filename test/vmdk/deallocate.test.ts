// VirtualDisk.deallocate on sparse extents: whole grains become holes (or the zeroed-grain entry),
// the grain table and its redundant copy stay equal, partial grains and flat disks are left alone,
// and the snapshot-child guard keeps entry 0 out of a disk whose holes would read a parent.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, openDisk, VmdkFormatError } from '../../src/vmdk/index.js';
import { HostFile } from '../../src/vmdk/file.js';
import { SparseExtent } from '../../src/vmdk/sparse-extent.js';
import { parseSparseHeader } from '../../src/vmdk/sparse-header.js';
import { run, tempDir } from './helpers.js';

const GRAIN = 64 * 1024;
let tmp: ReturnType<typeof tempDir>;

beforeAll(() => {
  tmp = tempDir();
});
afterAll(() => tmp?.cleanup());

/** Grain table 0 and redundant grain table 0 of a monolithicSparse file, as u32 entries. */
function tables(path: string): { gt: number[]; rgt: number[] } {
  const file = readFileSync(path);
  const h = parseSparseHeader(file.subarray(0, 512), path, 0);
  const entries = (sector: number) => Array.from({ length: h.numGTEsPerGT }, (_, i) => file.readUInt32LE(sector * 512 + i * 4));
  return { gt: entries(file.readUInt32LE(h.gdOffset * 512)), rgt: entries(file.readUInt32LE(h.rgdOffset * 512)) };
}

async function sparseWithData(name: string): Promise<string> {
  const path = join(tmp.dir, `${name}.vmdk`);
  const d = await createDisk(path, { capacity: 2 << 20, subformat: 'monolithicSparse' });
  try {
    await d.write(0, Buffer.alloc(8 * GRAIN, 0xab));
  } finally {
    await d.close();
  }
  return path;
}

describe('deallocate', () => {
  it('turns whole grains into holes, leaves partial grains, and keeps GT and redundant GT equal', async () => {
    const path = await sparseWithData('holes');
    const d = await openDisk(path);
    try {
      // [GRAIN/2, 5·GRAIN + 4096): grains 1..4 whole, 0 and 5 partial.
      expect(await d.deallocate(GRAIN / 2, 4.5 * GRAIN + 4096)).toEqual([{ offset: GRAIN, length: 4 * GRAIN }]);
      // Again: nothing left to free.
      expect(await d.deallocate(GRAIN, 4 * GRAIN)).toEqual([]);
      const ranges = [];
      for await (const r of d.allocatedRanges()) ranges.push(r);
      expect(ranges).toEqual([
        { offset: 0, length: GRAIN },
        { offset: 5 * GRAIN, length: 3 * GRAIN },
      ]);
      const back = await d.read(0, 8 * GRAIN);
      const expected = Buffer.alloc(8 * GRAIN, 0xab).fill(0, GRAIN, 5 * GRAIN);
      expect(back.equals(expected)).toBe(true);
    } finally {
      await d.close();
    }
    const { gt, rgt } = tables(path);
    expect(gt).toEqual(rgt);
    expect(gt.slice(0, 8).map((s) => s !== 0)).toEqual([true, false, false, false, false, true, true, true]);
    expect(run('qemu-img', ['check', '-f', 'vmdk', path])).toMatch(/No errors/);
  });

  it('uses the zeroed-grain entry 1 when the extent has the flag', async () => {
    const path = join(tmp.dir, 'zg.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse,zeroed_grain=on', path, '1M']);
    run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 256k', path]);
    const d = await openDisk(path);
    try {
      expect(await d.deallocate(0, 2 * GRAIN)).toEqual([{ offset: 0, length: 2 * GRAIN }]);
    } finally {
      await d.close();
    }
    const { gt, rgt } = tables(path);
    expect(gt.slice(0, 2)).toEqual([1, 1]);
    expect(rgt.slice(0, 2)).toEqual([1, 1]);
    expect(gt[2]).toBeGreaterThan(1);
  });

  it('never writes entry 0 where a hole would not read as zeros (a snapshot child)', async () => {
    const path = await sparseWithData('child');
    const file = await HostFile.open(path, true);
    const ext = await SparseExtent.open(file, { writable: true, whyReadOnly: '' });
    try {
      expect(await ext.zeroGrains(0, 4 * GRAIN, false)).toEqual([]);
      expect(await ext.zeroGrains(0, 4 * GRAIN, true)).toEqual([{ start: 0, end: 4 * GRAIN }]);
    } finally {
      await ext.close();
      await file.close();
    }
  });

  it('does nothing on a flat disk and refuses a read-only one', async () => {
    const flat = join(tmp.dir, 'flat.vmdk');
    await (await createDisk(flat, { capacity: 1 << 20, subformat: 'monolithicFlat' })).close();
    const d = await openDisk(flat);
    try {
      expect(await d.deallocate(0, 1 << 20)).toEqual([]);
    } finally {
      await d.close();
    }
    const ro = await openDisk(await sparseWithData('ro'), { readOnly: true });
    try {
      await expect(ro.deallocate(0, GRAIN)).rejects.toSatisfy((e: unknown) => e instanceof VmdkFormatError && e.code === 'ERR_VMDK_READ_ONLY');
    } finally {
      await ro.close();
    }
  });
});
