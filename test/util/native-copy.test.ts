// copyFileRange (native/fs_copy.cc): copy_file_range at explicit positions on libuv's pool — exact
// ranges, short counts at the end of the source, "unsupported" as -1, typed errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, fstatSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { nativeCopy, type NativeCopy } from '../../src/util/native-copy.js';
import { fileDataRanges } from '../../src/util/file-extents.js';

const MiB = 1 << 20;
let dir: string;
let native: NativeCopy;
const source = randomBytes(3 * MiB + 123);
let src: string;
const fds: number[] = [];

function openFd(path: string, flags: string): number {
  const fd = openSync(path, flags);
  fds.push(fd);
  return fd;
}

beforeAll(() => {
  native = nativeCopy()!;
  dir = mkdtempSync(join(tmpdir(), 'vmseal-copyrange-'));
  src = join(dir, 'src.bin');
  writeFileSync(src, source);
});
afterAll(() => {
  for (const fd of fds) closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

describe('copyFileRange', () => {
  it('is in the addon, bounded to 64 MiB a call', () => {
    expect(native).not.toBeNull();
    expect(native.COPY_RANGE_MAX_BYTES).toBe(64 * MiB);
  });

  it('copies exactly the range asked, at the positions asked, and leaves the rest of the output alone', async () => {
    const inFd = openFd(src, 'r');
    const out = join(dir, 'exact.bin');
    writeFileSync(out, Buffer.alloc(4 * MiB, 0xee));
    const outFd = openFd(out, 'r+');
    await expect(native.copyFileRange(inFd, 1000, outFd, 5000, 2 * MiB + 7)).resolves.toBe(2 * MiB + 7);
    await expect(native.copyFileRange(inFd, 0, outFd, 3 * MiB, 10)).resolves.toBe(10);
    const got = readFileSync(out);
    const want = Buffer.alloc(4 * MiB, 0xee);
    source.copy(want, 5000, 1000, 1000 + 2 * MiB + 7);
    source.copy(want, 3 * MiB, 0, 10);
    expect(got.equals(want)).toBe(true);
    // Length 0 copies nothing.
    await expect(native.copyFileRange(inFd, 0, outFd, 0, 0)).resolves.toBe(0);
  });

  it('stops short where the source ends (0 at its end), never past it', async () => {
    const inFd = openFd(src, 'r');
    const out = join(dir, 'short.bin');
    const outFd = openFd(out, 'w');
    await expect(native.copyFileRange(inFd, source.length - 100, outFd, 0, MiB)).resolves.toBe(100);
    await expect(native.copyFileRange(inFd, source.length, outFd, 100, MiB)).resolves.toBe(0);
    expect(readFileSync(out).equals(source.subarray(source.length - 100))).toBe(true);
  });

  it('copies into a hole of a sparse output without allocating the rest of it', async () => {
    const inFd = openFd(src, 'r');
    const out = join(dir, 'sparse.bin');
    const outFd = openFd(out, 'w+');
    // 1 MiB copied at 32 MiB of an empty file: the 32 MiB before it stay a hole.
    await expect(native.copyFileRange(inFd, 0, outFd, 32 * MiB, MiB)).resolves.toBe(MiB);
    expect(fstatSync(outFd).size).toBe(33 * MiB);
    expect(fileDataRanges(outFd, 0, 33 * MiB, 16)).toEqual([[32 * MiB, MiB]]);
  });

  it('resolves -1 where the kernel refuses the copy (overlapping ranges of one file), copying nothing', async () => {
    const p = join(dir, 'overlap.bin');
    const before = Buffer.from(source.subarray(0, MiB));
    writeFileSync(p, before);
    const fd = openFd(p, 'r+');
    await expect(native.copyFileRange(fd, 0, fd, 4096, 8192)).resolves.toBe(-1);
    expect(readFileSync(p).equals(before)).toBe(true);
  });

  it('rejects with ERR_COPY_RANGE_IO, errno and syscall on a descriptor that is not open or not readable', async () => {
    const outFd = openFd(join(dir, 'badfd.bin'), 'w');
    await expect(native.copyFileRange(1_000_000_000, 0, outFd, 0, 10)).rejects.toMatchObject({
      code: 'ERR_COPY_RANGE_IO',
      errno: 9,
      syscall: 'copy_file_range',
      message: expect.stringMatching(/^copy_file_range failed: /),
    });
    // The output opened read-only as the source of a copy: EBADF too.
    await expect(native.copyFileRange(outFd, 0, outFd, 10, 10)).rejects.toMatchObject({ code: 'ERR_COPY_RANGE_IO', errno: 9 });
  });

  it('checks its arguments before any work is queued', () => {
    const call = (...args: unknown[]) => (native.copyFileRange as (...a: unknown[]) => Promise<number>)(...args);
    expect(() => call('x', 0, 1, 0, 10)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', name: 'TypeError' }));
    expect(() => call(0, 0.5, 1, 0, 10)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => call(0, 0, 1, 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: 'length must be a number' }));
    expect(() => call(-1, 0, 1, 0, 10)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', name: 'RangeError' }));
    expect(() => call(0, -5, 1, 0, 10)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    // At most 64 MiB a call; positions plus length within the safe integers.
    expect(() => call(0, 0, 1, 0, 64 * MiB + 1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: 'length is out of range' }));
    expect(() => call(0, Number.MAX_SAFE_INTEGER, 1, 0, 10)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
  });
});
