// Cost proportional to the data (issue 10): a 16 TiB sparse disk with a few MiB in it opens, lists
// its data and reads it without touching the 524,288 grain tables qemu-img preallocates as holes;
// grain tables are checked when first used; a disk with many extent files keeps few open.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { closeSync, copyFileSync, mkdirSync, openSync, readSync, readdirSync, readlinkSync, renameSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { checkSparseFileFits, createDisk, openDisk, sparseFileFits, VmdkFormatError } from '../../src/vmdk/index.js';
import { FILE_HANDLES_MAX, fileHandleSettings } from '../../src/vmdk/file.js';
import { GT_CACHE_BYTES, gtCacheSettings } from '../../src/vmdk/sparse-extent.js';
import { verifyDisk } from '../../src/pipeline/index.js';
import { MiB, patternData, run, tempDir, tryRun } from './helpers.js';

const TiB = 2 ** 40;
const GiB = 2 ** 30;

let dir: string;
let cleanup: () => void;
beforeAll(() => ({ dir, cleanup } = tempDir()));
afterAll(() => cleanup());

/** Where qemu-io writes (offset, MiB, fill byte) in the 16 TiB disk: scattered over the capacity. */
const WRITES: Array<[number, number, number]> = [
  [0, 1, 0x11],
  [TiB + 3 * 65536, 1, 0x22],
  [8 * TiB, 2, 0x33],
  [16 * TiB - MiB, 1, 0x44],
];

let big: string;
let made = 0;
/** A new 16 TiB disk made by qemu-img, with WRITES done by qemu-io (a copy would write 2 GiB of holes). */
function makeBigDisk(): string {
  const path = join(dir, `big16t-${++made}.vmdk`);
  run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', path, '16T']);
  run('qemu-io', ['-f', 'vmdk', ...WRITES.flatMap(([at, mib, fill]) => ['-c', `write -P ${fill} ${at} ${mib}M`]), path]);
  return path;
}
function bigDisk(): string {
  big ??= makeBigDisk();
  return big;
}

/** Open file descriptors of this process that point into `folder`. */
function openFdsIn(folder: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      // A disk opened for writing also holds its lock file (`<disk>.vmseal-lock`): not an extent handle.
      if (target.startsWith(folder) && !target.endsWith('.vmseal-lock')) n++;
    } catch {
      // closed between readdir and readlink
    }
  }
  return n;
}

describe('a 16 TiB monolithicSparse with a few MiB of data', () => {
  it('opens, lists its data and reads it without reading the preallocated tables', async () => {
    const path = bigDisk();
    const rss0 = process.memoryUsage().rss;
    let peak = rss0;
    const sample = () => (peak = Math.max(peak, process.memoryUsage().rss));
    const disk = await openDisk(path, { readOnly: true });
    try {
      sample();
      expect(disk.capacity).toBe(16 * TiB);
      const ranges = [];
      for await (const r of disk.allocatedRanges()) ranges.push(r);
      sample();
      // qemu allocates whole 64 KiB grains: exactly the written MiBs.
      expect(ranges).toEqual(WRITES.map(([at, mib]) => ({ offset: at, length: mib * MiB })));
      for (const [at, mib, fill] of WRITES) {
        const got = await disk.read(at, mib * MiB);
        expect(got.every((b) => b === fill)).toBe(true);
        // The grain before the data (a hole in a written table, or in an unwritten one) is zeros.
        if (at > 0) expect((await disk.read(at - 65536, 65536)).every((b) => b === 0)).toBe(true);
      }
      // A read through a table that lies in a hole of the file (never written) is zeros.
      expect((await disk.read(5 * TiB, 4 * MiB)).every((b) => b === 0)).toBe(true);
      sample();
    } finally {
      await disk.close();
    }
    // The old open read 1 GiB of tables and kept every grain pointer (416 MB RSS for `info`); now the
    // directories (2 × 2 MiB), the sorted table sectors (4 MiB) and a bounded table cache.
    expect(peak - rss0).toBeLessThan(150 * MiB);
  });

  it("check: 'full' reads the tables that hold data and finds the disk sound", async () => {
    const disk = await openDisk(bigDisk(), { readOnly: true, check: 'full' });
    await disk.close();
    await expect(openDisk(bigDisk(), { check: 'nope' as 'full' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });

  it('a corrupt grain table is reported at the first use of its range, with file and offset', async () => {
    const path = makeBigDisk();
    // The table covering 1 TiB: GD entry (TiB / 64 KiB / 512) holds its sector.
    const head = Buffer.alloc(512);
    const fd = openSync(path, 'r+');
    try {
      readSync(fd, head, 0, 512, 0);
      const gdSector = Number(head.readBigUInt64LE(56));
      const entry = Buffer.alloc(4);
      readSync(fd, entry, 0, 4, gdSector * 512 + (TiB / 65536 / 512) * 4);
      const gtSector = entry.readUInt32LE(0);
      expect(gtSector).toBeGreaterThan(0);
      // Entry 3 (the grain at 1 TiB + 192 KiB) now points far past the end of the file.
      const bad = Buffer.alloc(4);
      bad.writeUInt32LE(0xfffff000);
      writeSync(fd, bad, 0, 4, gtSector * 512 + 3 * 4);
      const disk = await openDisk(path, { readOnly: true });
      try {
        // Ranges and data before the bad table are fine.
        expect((await disk.read(0, MiB)).every((b) => b === 0x11)).toBe(true);
        const err = await disk.read(TiB, MiB).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(VmdkFormatError);
        expect(err).toMatchObject({ code: 'ERR_VMDK_CORRUPT', file: path, offset: gtSector * 512 + 3 * 4 });
        expect((err as Error).message).toMatch(/past the end of the file/);
        // Same error for the listing of allocated ranges, and for a full check at open.
        const listed = await (async () => {
          for await (const r of disk.allocatedRanges()) void r;
        })().catch((e: unknown) => e);
        expect(listed).toMatchObject({ code: 'ERR_VMDK_CORRUPT', offset: gtSector * 512 + 3 * 4 });
      } finally {
        await disk.close();
      }
      await expect(openDisk(path, { readOnly: true, check: 'full' })).rejects.toMatchObject({ code: 'ERR_VMDK_CORRUPT' });
    } finally {
      closeSync(fd);
    }
  });
});

describe('tables in holes of the file', () => {
  it('a table written after open and evicted from the cache is read back from the file, not taken for a hole', async () => {
    gtCacheSettings.bytes = 4 * 2048; // 4 tables
    try {
      const path = join(dir, 'holes.vmdk');
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', path, '1G']);
      const disk = await openDisk(path);
      const model = new Map<number, Buffer>();
      // 16 of the 32 tables (32 MiB each), all holes at open: one grain in each, so the first ones are evicted.
      for (let i = 0; i < 16; i++) {
        const data = Buffer.alloc(65536, i + 1);
        model.set(i * 64 * MiB + 65536, data);
        await disk.write(i * 64 * MiB + 65536, data);
      }
      for (const [at, data] of model) expect((await disk.read(at, 65536)).equals(data)).toBe(true);
      const ranges = [];
      for await (const r of disk.allocatedRanges()) ranges.push(r.offset);
      expect(ranges).toEqual([...model.keys()]);
      await disk.close();
      expect(tryRun('qemu-img', ['check', path]).status).toBe(0);
      for (const [at, data] of model) expect(run('qemu-io', ['-r', '-f', 'vmdk', '-c', `read -P ${data[0]} ${at} 64k`, path])).not.toMatch(/fail/i);
    } finally {
      gtCacheSettings.bytes = GT_CACHE_BYTES;
    }
  });
});

describe('bounded file handles', () => {
  it('a disk of 200 extent files keeps at most the bound open: reads, writes and flush after eviction', async () => {
    fileHandleSettings.max = 8;
    try {
      const folder = join(dir, 'many');
      mkdirSync(folder);
      const path = join(folder, 'many.vmdk');
      const capacity = 200 * 2 * GiB;
      const created = await createDisk(path, { capacity, subformat: 'twoGbMaxExtentSparse' });
      await created.close();
      expect(readdirSync(folder).length).toBeGreaterThanOrEqual(200);

      const disk = await openDisk(path);
      expect(openFdsIn(folder)).toBeLessThanOrEqual(8);
      const model = new Map<number, Buffer>();
      // One write into every extent: each handle opened at open was closed since, and is reopened.
      for (let e = 0; e < 200; e++) {
        const at = e * 2 * GiB + 3 * MiB + 4096;
        const data = patternData(70000, e + 1);
        model.set(at, data);
        await disk.write(at, data);
        expect(openFdsIn(folder)).toBeLessThanOrEqual(8);
      }
      await disk.flush();
      for (const [at, data] of model) expect((await disk.read(at, data.length)).equals(data)).toBe(true);
      expect(openFdsIn(folder)).toBeLessThanOrEqual(8);
      let count = 0;
      for await (const r of disk.allocatedRanges()) count += r.length > 0 ? 1 : 0;
      expect(count).toBe(200);
      await disk.close();
      expect(openFdsIn(folder)).toBe(0);

      const back = await openDisk(path, { readOnly: true, check: 'full' });
      for (const [at, data] of model) expect((await back.read(at, data.length)).equals(data)).toBe(true);
      await back.close();
      expect(tryRun('qemu-img', ['check', path]).status).toBe(0);
    } finally {
      fileHandleSettings.max = FILE_HANDLES_MAX;
    }
  });

  it('an extent file replaced while its handle was closed is refused on reopen', async () => {
    fileHandleSettings.max = 2;
    try {
      const folder = join(dir, 'replaced');
      mkdirSync(folder);
      const path = join(folder, 'r.vmdk');
      const created = await createDisk(path, { capacity: 8 * 2 * GiB, subformat: 'twoGbMaxExtentSparse' });
      await created.write(0, patternData(65536, 9));
      await created.close();
      const disk = await openDisk(path);
      try {
        // Use the last extents so the first one's handle is closed.
        for (let e = 4; e < 8; e++) await disk.read(e * 2 * GiB, 4096);
        const first = readdirSync(folder)
          .filter((f) => f !== 'r.vmdk')
          .sort()[0];
        const victim = join(folder, first);
        copyFileSync(victim, `${victim}.new`);
        renameSync(`${victim}.new`, victim);
        const err = await disk.read(0, 4096).catch((e: unknown) => e);
        expect(err).toBeInstanceOf(VmdkFormatError);
        expect(err).toMatchObject({ code: 'ERR_VMDK_EXTENT_FILE', file: victim });
        expect((err as Error).message).toMatch(/replaced/);
        const werr = await disk.write(0, Buffer.alloc(512, 1)).catch((e: unknown) => e);
        expect(werr).toMatchObject({ code: 'ERR_VMDK_EXTENT_FILE' });
      } finally {
        await disk.close();
      }
    } finally {
      fileHandleSettings.max = FILE_HANDLES_MAX;
    }
  });
});

describe('monolithicSparse capacity', () => {
  it('createDisk writes a 16 TiB monolithicSparse (the 2 TiB limit is on the file, not the capacity)', async () => {
    const path = join(dir, 'made16t.vmdk');
    const disk = await createDisk(path, { capacity: 16 * TiB, subformat: 'monolithicSparse' });
    const data = patternData(200_000, 5);
    await disk.write(12 * TiB + 12345, data);
    await disk.close();
    const back = await openDisk(path, { readOnly: true, check: 'full' });
    expect((await back.read(12 * TiB + 12345, data.length)).equals(data)).toBe(true);
    await back.close();
    // qemu opens it (qemu-img check would read all 524,288 tables: 50 s) and finds the data where it was written.
    expect(run('qemu-io', ['-r', '-f', 'vmdk', '-c', `read -P 0 ${12 * TiB - MiB} 1M`, path])).not.toMatch(/fail/i);
    const mismatch = tryRun('qemu-io', ['-r', '-f', 'vmdk', '-c', `read -P 0 ${12 * TiB} 64k`, path]);
    expect(mismatch.stdout + mismatch.stderr).toMatch(/verification failed/i);
  });

  it('sparseFileFits counts data plus metadata against 2 TiB per file; checkSparseFileFits names twoGbMaxExtentSparse', () => {
    const grain = 65536;
    expect(sparseFileFits(16 * TiB, 32 * MiB, grain)).toBe(true);
    // A 16 TiB disk's preallocated tables and their redundant copies take 2 GiB (2 × 4 bytes per grain).
    expect(sparseFileFits(16 * TiB, 2 * TiB - 3 * GiB, grain)).toBe(true);
    expect(sparseFileFits(16 * TiB, 2 * TiB - 2 * GiB, grain)).toBe(false);
    expect(sparseFileFits(2 * TiB, 2 * TiB, grain)).toBe(false);
    // Beyond the grain directory vmseal reads back (2^20 tables of 32 MiB): 32 TiB with 64 KiB grains.
    expect(sparseFileFits(32 * TiB, 0, grain)).toBe(true);
    expect(sparseFileFits(32 * TiB + 32 * MiB, 0, grain)).toBe(false);
    expect(() => checkSparseFileFits(4 * TiB, 3 * TiB, grain, '/x/out.vmdk')).toThrow(
      expect.objectContaining({ code: 'ERR_VMDK_LIMIT', file: '/x/out.vmdk', message: expect.stringContaining('twoGbMaxExtentSparse') }),
    );
    expect(() => checkSparseFileFits(4 * TiB, GiB, grain)).not.toThrow();
  });
});

describe('verifyDisk asks for the full check', () => {
  it('a grain claimed by two table entries (found only by the full check) fails verify', async () => {
    const path = join(dir, 'twice.vmdk');
    const disk = await createDisk(path, { capacity: 4 * MiB, subformat: 'monolithicSparse' });
    await disk.write(0, patternData(2 * 65536, 3));
    await disk.close();
    const fd = openSync(path, 'r+');
    try {
      const head = Buffer.alloc(512);
      readSync(fd, head, 0, 512, 0);
      const gd = Number(head.readBigUInt64LE(56));
      const e = Buffer.alloc(8);
      readSync(fd, e, 0, 4, gd * 512);
      const gt = e.readUInt32LE(0);
      readSync(fd, e, 0, 8, gt * 512);
      writeSync(fd, e, 0, 4, gt * 512 + 4); // grain 1 → grain 0's sector
    } finally {
      closeSync(fd);
    }
    // A lazy open reads it (the two offsets now share a grain) ...
    const lazy = await openDisk(path, { readOnly: true });
    await lazy.close();
    // ... verify does not.
    await expect(verifyDisk(path)).rejects.toMatchObject({ code: 'ERR_VMDK_CORRUPT', message: expect.stringMatching(/claimed twice/) });
  });
});

describe('flush after eviction', () => {
  it('a dirty handle is synced before it is closed, and a failure of that sync is reported by the next flush()', async () => {
    fileHandleSettings.max = 1;
    const probe = await open(join(dir, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const realSync = proto.sync;
    let syncs = 0;
    let failing = false;
    proto.sync = async function (this: unknown) {
      syncs++;
      if (failing) throw Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' });
      return realSync.call(this);
    };
    try {
      const folder = join(dir, 'evict-sync');
      mkdirSync(folder);
      const path = join(folder, 'e.vmdk');
      const created = await createDisk(path, { capacity: 4 * 2 * GiB, subformat: 'twoGbMaxExtentSparse' });
      await created.close();
      const disk = await openDisk(path);
      try {
        await disk.write(0, Buffer.alloc(65536, 1)); // extent 0 dirty
        syncs = 0;
        await disk.read(2 * GiB, 4096); // extent 1 opens: extent 0 is synced, then closed
        expect(syncs).toBe(1);
        await disk.write(4 * GiB, Buffer.alloc(65536, 2)); // extent 2 dirty
        failing = true;
        await disk.read(6 * GiB, 4096); // its sync fails during the eviction: kept for flush()
        failing = false;
        const err = await disk.flush().catch((e: unknown) => e);
        expect(err).toMatchObject({ code: 'ERR_VMDK_IO', message: expect.stringContaining('EIO') });
        await disk.flush(); // reported once; later writes sync normally
        expect((await disk.read(4 * GiB, 65536)).every((b) => b === 2)).toBe(true);
      } finally {
        await disk.close();
      }
    } finally {
      proto.sync = realSync;
      fileHandleSettings.max = FILE_HANDLES_MAX;
    }
  });
});
