import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createDisk, type VirtualDisk } from '../../src/vmdk/index.js';
import { blockRuns, putChunkKeepingHoles } from '../../src/backup/chunk-blocks.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function allocated(disk: VirtualDisk): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  for await (const r of disk.allocatedRanges()) out.push([r.offset, r.offset + r.length]);
  return out;
}

/** A 1 MiB chunk of 64 KiB grains: grains 0, 1 and 5 hold data, the others are zeros. */
function chunk(): Buffer {
  const data = Buffer.alloc(MiB);
  for (const g of [0, 1, 5]) data.fill(g + 1, g * 64 * KiB, (g + 1) * 64 * KiB);
  return data;
}

describe('chunk blocks', () => {
  it('cuts a chunk into runs of zero and non-zero blocks', () => {
    expect(blockRuns(chunk(), 64 * KiB)).toEqual([
      [0, 128 * KiB, false],
      [128 * KiB, 320 * KiB, true],
      [320 * KiB, 384 * KiB, false],
      [384 * KiB, MiB, true],
    ]);
  });

  it('writes the non-zero grains, leaves or deallocates the zero ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmseal-chunk-blocks-'));
    dirs.push(dir);
    const disk = await createDisk(join(dir, 'd.vmdk'), { capacity: 2 * MiB, subformat: 'monolithicSparse', grainSize: 64 * KiB });
    try {
      // A new disk: the zero grains stay unallocated.
      expect(await putChunkKeepingHoles(disk, 0, chunk(), 64 * KiB, 'skip')).toBe(192 * KiB);
      expect(await allocated(disk)).toEqual([
        [0, 128 * KiB],
        [320 * KiB, 384 * KiB],
      ]);
      // A rolled-back disk: grains allocated now and zero in the chunk become holes again.
      await disk.write(MiB, Buffer.alloc(MiB, 7));
      const second = Buffer.alloc(MiB);
      second.fill(9, 0, 64 * KiB);
      expect(await putChunkKeepingHoles(disk, MiB, second, 64 * KiB, 'deallocate')).toBe(64 * KiB);
      expect((await allocated(disk)).filter(([s]) => s >= MiB)).toEqual([[MiB, MiB + 64 * KiB]]);
      expect((await disk.read(MiB, MiB)).equals(second)).toBe(true);
    } finally {
      await disk.close();
    }
  });
});
