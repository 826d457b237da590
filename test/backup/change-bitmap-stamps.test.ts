// The disk generation of a change bitmap (src/backup/change-bitmap.ts generationOf) covers every file
// of a disk of many extent files, whose stats run concurrently: the same files give the same
// generation, and a change to any one of them (or its loss) gives another.
import { readFileSync, rmSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDisk, Descriptor, openDisk, plannedDiskFiles } from '../../src/vmdk/index.js';
import { generationOf, sameGeneration } from '../../src/backup/change-bitmap.js';
import { tempDir } from '../disk/helpers.js';

const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-ctk-stamps-');
});
afterAll(() => tmp.cleanup());

describe('change bitmap generation of a disk of many files', () => {
  it('is stable, and changes with any one extent file', async () => {
    const path = join(tmp.dir, 'many.vmdk');
    const sizes = { capacity: 48 * MiB, subformat: 'twoGbMaxExtentSparse' as const, maxExtentSize: MiB };
    await (await createDisk(path, sizes)).close();
    const files = plannedDiskFiles(path, sizes);
    expect(files.length).toBe(49);
    const generation = async () => {
      const disk = await openDisk(path, { readOnly: true });
      try {
        return (await generationOf(disk))!;
      } finally {
        await disk.close();
      }
    };
    const g0 = await generation();
    expect(sameGeneration(g0, await generation())).toBe(true);
    // A change of the 40th extent file's times (as a write would make): another generation.
    utimesSync(files[40]!, new Date(0), new Date(0));
    const g1 = await generation();
    expect(sameGeneration(g0, g1)).toBe(false);
    expect(sameGeneration(g1, await generation())).toBe(true);
    // A missing extent file is another generation, not an error.
    rmSync(files[48]!);
    // (The disk no longer opens: its generation is taken from what a backup would have read of it.)
    const fake = { path, capacity: 48 * MiB, format: 'vmdk' as const, descriptor: Descriptor.parse(readFileSync(path, 'utf8')) };
    const g2 = (await generationOf(fake))!;
    expect(sameGeneration(g1, g2)).toBe(false);
  });
});
