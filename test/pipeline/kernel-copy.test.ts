// Plain flat copies by the kernel (src/pipeline/kernel-copy.ts): copy_file_range of the source's
// data ranges into the new flat output — byte-identical, holes kept, split at extent boundaries —
// and the fallbacks: VMSEAL_KERNEL_COPY=0, a kernel that refuses (at once or half way), a failing
// copy, a cancelled one.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, statfsSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertDisk } from '../../src/pipeline/index.js';
import { KERNEL_COPY_ENV, kernelCopy } from '../../src/pipeline/kernel-copy.js';
import { createDisk, openDisk } from '../../src/vmdk/index.js';
import { fileDataRanges } from '../../src/util/file-extents.js';
import { nativeCopy, type NativeCopy } from '../../src/util/native-copy.js';
import type { NativeWriteback } from '../../src/util/native-writeback.js';
import { TMPFS_MAGIC } from '../../src/util/inline-io.js';

const KiB = 1024;
const MiB = 1 << 20;
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-kcopy-'));
  // Wherever the temporary folder is (tmpfs by default leaves the job to the engine).
  process.env[KERNEL_COPY_ENV] = '1';
});
afterEach(() => {
  delete process.env[KERNEL_COPY_ENV];
  rmSync(dir, { recursive: true, force: true });
});

/** Data at these [offset, length]s of the image; everything else a hole. */
const DATA: Array<[number, number]> = [
  [1 * MiB, MiB],
  [5 * MiB + 64 * KiB, 192 * KiB],
  [12 * MiB - 64 * KiB, 64 * KiB],
];
/** Zeros written as data (allocated): a kernel copy keeps them allocated, the engine leaves them out. */
const ZEROS: [number, number] = [8 * MiB, 256 * KiB];
const CAPACITY = 12 * MiB;

/** Write the test data into the file `path` at `base` (the file is left sparse elsewhere). */
function fill(path: string, base: number, size: number): Buffer {
  truncateSync(path, base + size);
  const image = Buffer.alloc(size);
  const fd = openSync(path, 'r+');
  try {
    for (const [at, len] of DATA) {
      const bytes = randomBytes(len);
      bytes.copy(image, at);
      writeSync(fd, bytes, 0, len, base + at);
    }
    writeSync(fd, Buffer.alloc(ZEROS[1]), 0, ZEROS[1], base + ZEROS[0]);
  } finally {
    closeSync(fd);
  }
  return image;
}

/** A monolithicFlat VMDK made by qemu-img, its extent filled with the test data; returns [descriptor, image]. */
function flatInput(name = 'in.vmdk', capacity = CAPACITY, folder = dir): [string, Buffer] {
  const p = join(folder, name);
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p, String(capacity)]);
  return [p, fill(p.replace(/\.vmdk$/, '-flat.vmdk'), 0, capacity)];
}

function dataRanges(path: string): Array<[number, number]> {
  const fd = openSync(path, 'r');
  try {
    return fileDataRanges(fd, 0, 2 ** 40, 1 << 16);
  } finally {
    closeSync(fd);
  }
}

function sameImage(a: string, b: string, fa = 'vmdk', fb = 'vmdk'): void {
  execFileSync('qemu-img', ['compare', '-q', '-f', fa, '-F', fb, a, b]);
}

/** The addon's call, recording each call's length; `override` may answer instead (return undefined to copy). */
function recording(override?: (call: number) => Promise<number> | undefined): { native: NativeCopy; lengths: number[] } {
  const real = nativeCopy()!;
  const lengths: number[] = [];
  const native: NativeCopy = {
    COPY_RANGE_MAX_BYTES: real.COPY_RANGE_MAX_BYTES,
    copyFileRange(fdIn, posIn, fdOut, posOut, length) {
      lengths.push(length);
      return override?.(lengths.length) ?? real.copyFileRange(fdIn, posIn, fdOut, posOut, length);
    },
  };
  return { native, lengths };
}

/** Open `input` and a new monolithicFlat output beside it, run kernelCopy, close both. */
async function copyWith(
  input: string,
  native: NativeCopy | null,
  signal?: AbortSignal,
  name = 'k.vmdk',
): Promise<{ result: boolean; progress: number; out: string }> {
  const out = join(dir, name);
  const source = await openDisk(input, { readOnly: true });
  const target = await createDisk(out, { capacity: source.capacity, subformat: 'monolithicFlat' });
  let progress = 0;
  try {
    const result = await kernelCopy({ source, target, native, what: 'test copy', progress: (n) => (progress += n), ...(signal ? { signal } : {}) });
    return { result, progress, out };
  } finally {
    await target.close();
    await source.close();
  }
}

describe('kernelCopy', () => {
  it('copies the data ranges of a flat input with copy_file_range, keeping its holes, and reports the whole capacity', async () => {
    const [input] = flatInput();
    const { native, lengths } = recording();
    const { result, progress, out } = await copyWith(input, native);
    expect(result).toBe(true);
    // One call per data range (each under 64 MiB), none for the holes.
    const inputRanges = dataRanges(join(dir, 'in-flat.vmdk'));
    expect(lengths).toEqual(inputRanges.map(([, len]) => len));
    expect(progress).toBe(CAPACITY);
    sameImage(input, out);
    expect(dataRanges(join(dir, 'k-flat.vmdk'))).toEqual(inputRanges);
  });

  it('returns false with nothing written when the kernel refuses the first copy (the engine then runs)', async () => {
    const [input] = flatInput();
    const { native, lengths } = recording(() => Promise.resolve(-1));
    const { result, out } = await copyWith(input, native);
    expect(result).toBe(false);
    expect(lengths).toHaveLength(1);
    expect(dataRanges(join(dir, 'k-flat.vmdk'))).toEqual([]);
    expect(out).toBeDefined();
  });

  it('returns false without the addon call, and leaves sparse inputs and outputs to the engine', async () => {
    const [input] = flatInput();
    expect((await copyWith(input, null, undefined, 'none.vmdk')).result).toBe(false);
    const sparse = join(dir, 'sparse.vmdk');
    execFileSync('qemu-img', ['convert', '-q', '-f', 'vmdk', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', input, sparse]);
    const { native, lengths } = recording();
    expect((await copyWith(sparse, native)).result).toBe(false);
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 's-out.vmdk'), { capacity: CAPACITY, subformat: 'monolithicSparse' });
    try {
      expect(await kernelCopy({ source, target, native, what: 'x', progress: () => undefined })).toBe(false);
    } finally {
      await target.close();
      await source.close();
    }
    expect(lengths).toEqual([]);
  });

  it('finishes through the VMDK layer when the kernel refuses half way', async () => {
    const [input] = flatInput();
    const { native, lengths } = recording((call) => (call > 1 ? Promise.resolve(-1) : undefined));
    const { result, out } = await copyWith(input, native);
    expect(result).toBe(true);
    expect(lengths.length).toBeGreaterThan(1);
    sameImage(input, out);
  });

  it('reports a failed copy as ERR_VMDK_IO naming the errno', async () => {
    const [input] = flatInput();
    const failure = Object.assign(new Error('copy_file_range failed: No space left on device'), {
      code: 'ERR_COPY_RANGE_IO',
      errno: 28,
      syscall: 'copy_file_range',
    });
    const { native } = recording((call) => (call === 2 ? Promise.reject(failure) : undefined));
    const err = await copyWith(input, native).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'ERR_VMDK_IO',
      message: expect.stringMatching(/^cannot copy \d+ bytes at virtual offset \d+ from .*in-flat\.vmdk: ENOSPC/),
    });
    expect((err as Error).cause).toBe(failure);
  });

  it('stops at the next piece when cancelled', async () => {
    const [input] = flatInput();
    const ac = new AbortController();
    const { native, lengths } = recording((call) => {
      if (call === 1) ac.abort();
      return undefined;
    });
    await expect(copyWith(input, native, ac.signal)).rejects.toMatchObject({ code: 'ERR_ABORTED', name: 'AbortError' });
    expect(lengths).toHaveLength(1);
  });
});

describe('kernelCopy on tmpfs', () => {
  it('leaves outputs on tmpfs to the engine unless VMSEAL_KERNEL_COPY=1, and copies on a disk by default', async () => {
    const shm = existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS_MAGIC ? mkdtempSync(join('/dev/shm', 'vmseal-kcopy-')) : undefined;
    try {
      for (const folder of [dir, ...(shm ? [shm] : [])]) {
        const onTmpfs = statfsSync(folder).type === TMPFS_MAGIC;
        for (const setting of [undefined, '1']) {
          if (setting === undefined) delete process.env[KERNEL_COPY_ENV];
          else process.env[KERNEL_COPY_ENV] = setting;
          const sub = mkdtempSync(join(folder, 'k-'));
          const [input] = flatInput('in.vmdk', CAPACITY, sub);
          const { native, lengths } = recording();
          const source = await openDisk(input, { readOnly: true });
          const target = await createDisk(join(sub, 'out.vmdk'), { capacity: CAPACITY, subformat: 'monolithicFlat' });
          try {
            const copied = await kernelCopy({ source, target, native, what: 'x', progress: () => undefined });
            expect(copied).toBe(setting === '1' || !onTmpfs);
            expect(lengths.length > 0).toBe(copied);
          } finally {
            await target.close();
            await source.close();
          }
        }
      }
    } finally {
      if (shm) rmSync(shm, { recursive: true, force: true });
    }
  });
});

describe('kernelCopy write-behind', () => {
  it('starts the writeback of each copied piece on a disk, and of none on tmpfs', async () => {
    const folders = [dir, ...(existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS_MAGIC ? [mkdtempSync(join('/dev/shm', 'vmseal-kcopy-'))] : [])];
    try {
      for (const folder of folders) {
        const [input] = flatInput('in.vmdk', CAPACITY, folder);
        const started: Array<[number, number]> = [];
        const writeback: NativeWriteback = {
          writebackStart: (_fd, offset, length) => {
            started.push([offset, length]);
            return Promise.resolve(true);
          },
        };
        const source = await openDisk(input, { readOnly: true });
        const target = await createDisk(join(folder, 'wb.vmdk'), { capacity: CAPACITY, subformat: 'monolithicFlat' });
        try {
          expect(await kernelCopy({ source, target, writeback, what: 'x', progress: () => undefined })).toBe(true);
        } finally {
          await target.close();
          await source.close();
        }
        // Two pieces run at once: they may finish in either order.
        expect(started.sort((a, b) => a[0] - b[0])).toEqual(statfsSync(folder).type !== TMPFS_MAGIC ? dataRanges(join(folder, 'in-flat.vmdk')) : []);
      }
    } finally {
      for (const f of folders.slice(1)) rmSync(f, { recursive: true, force: true });
    }
  });
});

describe('convert of plain flat disks', () => {
  it('flat → flat: identical bytes, the input holes kept, and the same bytes through the engine (VMSEAL_KERNEL_COPY=0)', async () => {
    const [input] = flatInput();
    const out = join(dir, 'out.vmdk');
    const r = await convertDisk(input, out);
    expect(r.bytesProcessed).toBe(CAPACITY);
    sameImage(input, out);
    // The kernel copied the data as it lies: the zeros written as data too (qemu-img's first 4 KiB
    // and ours), and nothing in the holes.
    const inputRanges = dataRanges(join(dir, 'in-flat.vmdk'));
    expect(inputRanges).toContainEqual(ZEROS);
    expect(dataRanges(join(dir, 'out-flat.vmdk'))).toEqual(inputRanges);

    process.env[KERNEL_COPY_ENV] = '0';
    const viaEngine = join(dir, 'engine.vmdk');
    const e = await convertDisk(input, viaEngine);
    expect(e.bytesProcessed).toBe(CAPACITY);
    sameImage(input, viaEngine);
    sameImage(out, viaEngine);
    // The engine reads every byte and leaves all-zero blocks out.
    expect(dataRanges(join(dir, 'engine-flat.vmdk'))).toEqual(DATA);
  });

  it('flat → raw and raw → flat go through the kernel too', async () => {
    const [input, image] = flatInput();
    const raw = join(dir, 'out.img');
    await convertDisk(input, raw, { subformat: 'raw' });
    expect(readFileSync(raw).equals(image)).toBe(true);
    expect(dataRanges(raw)).toEqual(dataRanges(join(dir, 'in-flat.vmdk')));

    const rawIn = join(dir, 'in.raw');
    writeFileSync(rawIn, '');
    const rawImage = fill(rawIn, 0, CAPACITY);
    const flat = join(dir, 'from-raw.vmdk');
    await convertDisk(rawIn, flat, { subformat: 'monolithicFlat' });
    sameImage(rawIn, flat, 'raw');
    expect(readFileSync(join(dir, 'from-raw-flat.vmdk')).equals(rawImage)).toBe(true);
    expect(dataRanges(join(dir, 'from-raw-flat.vmdk'))).toEqual([DATA[0], DATA[1], ZEROS, DATA[2]]);
  });

  it('splits the copy at extent boundaries: monolithicFlat → twoGbMaxExtentFlat across the 2 GiB line', async () => {
    const capacity = 2048 * MiB + 4 * MiB;
    const p = join(dir, 'big.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', p, String(capacity)]);
    const across = randomBytes(2 * MiB);
    const fd = openSync(join(dir, 'big-flat.vmdk'), 'r+');
    writeSync(fd, across, 0, across.length, 2048 * MiB - MiB);
    closeSync(fd);
    const out = join(dir, 'split.vmdk');
    await convertDisk(p, out, { subformat: 'twoGbMaxExtentFlat' });
    sameImage(p, out);
    expect(dataRanges(join(dir, 'split-f001.vmdk'))).toEqual([...dataRanges(join(dir, 'big-flat.vmdk')).filter(([at]) => at < 2047 * MiB), [2047 * MiB, MiB]]);
    expect(dataRanges(join(dir, 'split-f002.vmdk'))).toEqual([[0, MiB]]);
  });

  it('a flat extent file shorter than its extent is still reported as truncated (by the engine)', async () => {
    const [input] = flatInput();
    truncateSync(join(dir, 'in-flat.vmdk'), CAPACITY - 4096);
    await expect(convertDisk(input, join(dir, 'trunc.vmdk'))).rejects.toMatchObject({ code: 'ERR_VMDK_TRUNCATED' });
  });
});
