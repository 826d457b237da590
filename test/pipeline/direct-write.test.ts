// How copy jobs write their output: the choice of path (O_DIRECT for flat outputs on a disk, the
// page cache with write-behind for sparse ones, the page cache alone on tmpfs) and the direct writer
// itself on real files: aligned parts with O_DIRECT, unaligned heads and tails through the VMDK
// layer, and a fallback to the VMDK layer when O_DIRECT is refused.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { constants, existsSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDisk, openDisk } from '../../src/vmdk/index.js';
import { allocateCipherBuffer } from '../../src/xts/index.js';
import { DIRECT_ALIGN, DIRECT_WRITE_CONCURRENCY, DirectWriter, isFlatOutput, outputWritePath } from '../../src/pipeline/direct-write.js';
import { outputFiles } from '../../src/pipeline/output-files.js';
import { isMemoryBacked, TMPFS_MAGIC } from '../../src/util/inline-io.js';
import { MEMORY_WRITE_CONCURRENCY, openOutputWriter } from '../../src/pipeline/output-writer.js';
import { decryptDisk, encryptDisk, verifyDisk } from '../../src/index.js';

const MiB = 1 << 20;
let dir: string;
const cleanup: string[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-direct-'));
  cleanup.push(dir);
});
afterEach(() => {
  for (const d of cleanup.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A folder on tmpfs, or undefined where /dev/shm is not one. */
function shmDir(): string | undefined {
  if (!existsSync('/dev/shm') || statfsSync('/dev/shm').type !== TMPFS_MAGIC) return undefined;
  const d = mkdtempSync(join('/dev/shm', 'vmseal-direct-'));
  cleanup.push(d);
  return d;
}

/**
 * A chunk buffer like the engine's, filled with a pattern that differs per byte. From 64 KiB on,
 * allocateCipherBuffer maps whole pages (page-aligned memory, as O_DIRECT needs); below, it is heap
 * memory, so the tests take subarrays of 64 KiB buffers.
 */
function pattern(length: number, seed: number): Buffer {
  const b = allocateCipherBuffer(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

const diskIsTmpfs = () => statfsSync(tmpdir()).type === TMPFS_MAGIC;

describe('outputWritePath', () => {
  it('uses O_DIRECT for flat outputs on a disk, write-behind otherwise, and neither on tmpfs', () => {
    expect(outputWritePath({ memoryFs: false, flat: true, directAvailable: true })).toBe('direct');
    expect(outputWritePath({ memoryFs: false, flat: false, directAvailable: true })).toBe('write-behind');
    expect(outputWritePath({ memoryFs: false, flat: true, directAvailable: false })).toBe('write-behind');
    expect(outputWritePath({ memoryFs: true, flat: true, directAvailable: true })).toBe('page-cache');
    expect(outputWritePath({ memoryFs: true, flat: false, directAvailable: true })).toBe('page-cache');
  });

  it('knows tmpfs from a disk folder', async () => {
    const shm = shmDir();
    if (shm) await expect(isMemoryBacked(shm)).resolves.toBe(true);
    if (!diskIsTmpfs()) await expect(isMemoryBacked(dir)).resolves.toBe(false);
    await expect(isMemoryBacked(join(dir, 'missing', 'folder'))).resolves.toBe(false); // statfs fails: treated as a disk
  });

  it('tells flat outputs (raw, FLAT extents) from sparse ones', async () => {
    const raw = await createDisk(join(dir, 'a.img'), { capacity: MiB, subformat: 'raw' });
    const flat = await createDisk(join(dir, 'b.vmdk'), { capacity: 5 * 1024 * MiB, subformat: 'twoGbMaxExtentFlat' });
    const sparse = await createDisk(join(dir, 'c.vmdk'), { capacity: MiB, subformat: 'monolithicSparse' });
    try {
      expect([isFlatOutput(raw), isFlatOutput(flat), isFlatOutput(sparse)]).toEqual([true, true, false]);
      // The flat one maps to its three extent files, each from offset 0.
      const { files, segments } = outputFiles(flat);
      expect(files.map((f) => f.slice(dir.length + 1))).toEqual(['b-f001.vmdk', 'b-f002.vmdk', 'b-f003.vmdk']);
      expect(segments.map((s) => [s.start / MiB, s.end / MiB, s.file, s.fileOffset])).toEqual([
        [0, 2048, 0, 0],
        [2048, 4096, 1, 0],
        [4096, 5120, 2, 0],
      ]);
    } finally {
      for (const d of [raw, flat, sparse]) await d.close();
    }
  });

  it('the copy job picks the path from the output folder and subformat', async () => {
    const flat = await createDisk(join(dir, 'f.vmdk'), { capacity: MiB, subformat: 'monolithicFlat' });
    const sparse = await createDisk(join(dir, 's.vmdk'), { capacity: MiB, subformat: 'monolithicSparse' });
    try {
      if (!diskIsTmpfs()) {
        const a = await openOutputWriter(flat, dir);
        const b = await openOutputWriter(sparse, dir);
        expect([a.path, b.path]).toEqual(['direct', 'write-behind']);
        expect([a.writeConcurrency, b.writeConcurrency]).toEqual([DIRECT_WRITE_CONCURRENCY, 1]);
        await a.close();
        await b.close();
      }
      const shm = shmDir();
      if (shm) {
        // Flat files on tmpfs take a second write while one runs (a sparse output keeps its order).
        const c = await openOutputWriter(flat, shm);
        const d = await openOutputWriter(sparse, shm);
        expect([c.path, d.path]).toEqual(['page-cache', 'page-cache']);
        expect([c.writeConcurrency, d.writeConcurrency]).toEqual([MEMORY_WRITE_CONCURRENCY, 1]);
        await c.close();
        await d.close();
      }
    } finally {
      await flat.close();
      await sparse.close();
    }
  });
});

describe('DirectWriter', () => {
  it('writes aligned data with O_DIRECT and unaligned heads and tails through the VMDK layer, across extent files', async () => {
    // Two extent files of 2 GiB (sparse on the file system); capacity not a multiple of 4 KiB.
    const capacity = 2048 * MiB + 8192 + 512;
    const path = join(dir, 'o.vmdk');
    const disk = await createDisk(path, { capacity, subformat: 'twoGbMaxExtentFlat' });
    const w = DirectWriter.open(disk)!;
    expect(w).not.toBeNull();
    const writes: Array<[number, Buffer]> = [];
    try {
      // Aligned: all direct.
      const a = pattern(MiB, 1);
      writes.push([0, a]);
      await w.write(0, a);
      expect(w.directBytes).toBe(MiB);
      // A piece that starts 512 bytes before a 4 KiB boundary: 512 buffered, 8 KiB direct, 512 buffered.
      const b = pattern(64 * 1024, 2).subarray(DIRECT_ALIGN - 512, 3 * DIRECT_ALIGN + 512);
      writes.push([4 * MiB - 512, b]);
      await w.write(4 * MiB - 512, b);
      expect(w.directBytes).toBe(MiB + 2 * DIRECT_ALIGN);
      // Across the boundary of the two extent files, ending at the capacity (its last 512 bytes unaligned).
      const from = 2048 * MiB - 2 * DIRECT_ALIGN;
      const c = pattern(64 * 1024, 3).subarray(0, capacity - from);
      writes.push([from, c]);
      const before = w.directBytes;
      await w.write(from, c);
      expect(w.directBytes - before).toBe(2 * DIRECT_ALIGN + 8192);
      expect(w.fellBack).toBe(false);
    } finally {
      await w.close();
      await disk.close();
    }
    const back = await openDisk(path);
    try {
      for (const [offset, data] of writes) {
        const got = Buffer.alloc(data.length);
        await back.readInto(offset, got);
        expect(got.equals(data)).toBe(true);
      }
    } finally {
      await back.close();
    }
  });

  it('falls back to the VMDK layer for good when the file cannot be opened for direct writes', async () => {
    const path = join(dir, 'r.img');
    const disk = await createDisk(path, { capacity: 4 * MiB, subformat: 'raw' });
    // O_DIRECTORY on a regular file fails at open (ENOTDIR), like a file system that refuses O_DIRECT (EINVAL).
    const w = DirectWriter.open(disk, constants.O_DIRECTORY)!;
    const a = pattern(MiB, 4);
    const b = pattern(MiB, 5);
    try {
      await w.write(0, a);
      await w.write(MiB, b);
      expect(w.fellBack).toBe(true);
      expect(w.directBytes).toBe(0);
    } finally {
      await w.close();
      await disk.close();
    }
    const content = readFileSync(path);
    expect(content.subarray(0, MiB).equals(a)).toBe(true);
    expect(content.subarray(MiB, 2 * MiB).equals(b)).toBe(true);
  });

  it('writes a piece whose memory is not aligned through the VMDK layer, and goes on directly after it', async () => {
    const path = join(dir, 'm.img');
    const disk = await createDisk(path, { capacity: 4 * MiB, subformat: 'raw' });
    const w = DirectWriter.open(disk)!;
    const odd = pattern(64 * 1024 + 512, 6).subarray(512); // file offset aligned, memory 512 bytes off
    const next = pattern(64 * 1024, 7);
    try {
      await w.write(0, odd);
      expect(w.directBytes).toBe(0);
      await w.write(64 * 1024, next);
      expect(w.directBytes).toBe(64 * 1024);
      expect(w.fellBack).toBe(false);
    } finally {
      await w.close();
      await disk.close();
    }
    const content = readFileSync(path);
    expect(content.subarray(0, 64 * 1024).equals(odd)).toBe(true);
    expect(content.subarray(64 * 1024, 128 * 1024).equals(next)).toBe(true);
  });

  it('is not used for sparse outputs', async () => {
    const disk = await createDisk(join(dir, 's.vmdk'), { capacity: MiB, subformat: 'monolithicSparse' });
    try {
      expect(DirectWriter.open(disk)).toBeNull();
    } finally {
      await disk.close();
    }
  });
});

describe('copy job on a disk folder', () => {
  it('an encrypt to monolithicFlat verifies, with a capacity that is not a multiple of 4 KiB', async () => {
    const src = join(dir, 'in.img');
    const capacity = 9 * MiB + 3 * 512;
    writeFileSync(src, pattern(capacity, 8));
    const out = join(dir, 'out.vmdk');
    const lockers = [{ kind: 'passphrase' as const, passphrase: 'pw', rounds: 1000 }];
    await encryptDisk(src, out, { subformat: 'monolithicFlat', lockers, chunkSize: 4 * MiB });
    const r = await verifyDisk(out, { keys: { passphrase: 'pw' }, against: src });
    expect(r.ok).toBe(true);
  });
});

describe('copy job on tmpfs', () => {
  it('an encrypt to monolithicFlat with two chunk writes at once verifies, and decrypts to the same bytes', async () => {
    const shm = shmDir();
    if (!shm) return;
    const src = join(shm, 'in.img');
    const capacity = 9 * MiB + 3 * 512;
    const data = pattern(capacity, 9);
    writeFileSync(src, data);
    const out = join(shm, 'out.vmdk');
    const lockers = [{ kind: 'passphrase' as const, passphrase: 'pw', rounds: 1000 }];
    // 1 MiB chunks: ten writes, up to two of them running at once, finishing in any order.
    await encryptDisk(src, out, { subformat: 'monolithicFlat', lockers, chunkSize: MiB });
    expect((await verifyDisk(out, { keys: { passphrase: 'pw' }, against: src })).ok).toBe(true);
    const back = join(shm, 'back.img');
    await decryptDisk(out, back, { keys: { passphrase: 'pw' }, subformat: 'raw', chunkSize: MiB });
    expect(readFileSync(back).equals(data)).toBe(true);
  });
});
