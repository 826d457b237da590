// qemu 7.2 images kept as fixtures: vmseal must read them byte-identically whatever qemu CI has.
import { describe, it, expect } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { openDisk } from '../../src/vmdk/index.js';
import { tempDir } from './helpers.js';

const fixtures = fileURLToPath(new URL('../fixtures/vmdk/', import.meta.url));

const CASES = [
  {
    name: 'qemu72-zeroed.vmdk',
    sha256: '8318b114e5c236684bb1500c618fe49a56bf3d68f6d223fee2c691a5e92e8b14',
    subformat: 'monolithicSparse',
    ranges: [
      [0, 65536],
      [262144, 65536],
      [983040, 65536],
    ],
  },
  {
    name: 'qemu72-stream.vmdk',
    sha256: 'a5d42325d12a8be3ac2f455fa2c0ed857e85bf8eb5758aca1b6acef9ee44cf50',
    subformat: 'streamOptimized',
    ranges: [[0, 1048576]],
  },
];

describe('qemu 7.2 fixtures', () => {
  for (const c of CASES) {
    it(c.name, async () => {
      const { dir, cleanup } = tempDir();
      try {
        const path = join(dir, c.name);
        writeFileSync(path, gunzipSync(readFileSync(join(fixtures, `${c.name}.gz`))));
        const disk = await openDisk(path, { readOnly: true });
        expect(disk.capacity).toBe(1048576);
        expect(disk.subformat).toBe(c.subformat);
        const data = await disk.read(0, disk.capacity);
        expect(createHash('sha256').update(data).digest('hex')).toBe(c.sha256);
        const ranges: number[][] = [];
        for await (const r of disk.allocatedRanges()) ranges.push([r.offset, r.length]);
        expect(ranges).toEqual(c.ranges);
        await disk.close();
      } finally {
        cleanup();
      }
    });
  }
});
