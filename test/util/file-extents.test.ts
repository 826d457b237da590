// fileDataRanges (native/fs_extents.cc): the data ranges of a file with holes, SEEK_DATA/SEEK_HOLE.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileDataRanges } from '../../src/util/file-extents.js';

const MiB = 1 << 20;
let dir: string;
let fd: number;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-extents-'));
  fd = openSync(join(dir, 'holes.bin'), 'w+');
  ftruncateSync(fd, 16 * MiB);
  // Data at 1 MiB, 5 MiB and 9 MiB (64 KiB each: whole blocks on any file system).
  for (const at of [1, 5, 9]) writeSync(fd, Buffer.alloc(65536, 7), 0, 65536, at * MiB);
});
afterAll(() => {
  closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

describe('fileDataRanges', () => {
  it('lists the data ranges of [start, end), clipped to it, and nothing in holes', () => {
    expect(fileDataRanges(fd, 0, 16 * MiB, 100)).toEqual([
      [1 * MiB, 65536],
      [5 * MiB, 65536],
      [9 * MiB, 65536],
    ]);
    expect(fileDataRanges(fd, MiB + 4096, 5 * MiB + 100, 100)).toEqual([
      [MiB + 4096, 65536 - 4096],
      [5 * MiB, 100],
    ]);
    expect(fileDataRanges(fd, 2 * MiB, 5 * MiB, 100)).toEqual([]);
    // Past the end of the file: ENXIO ends the scan.
    expect(fileDataRanges(fd, 20 * MiB, 30 * MiB, 100)).toEqual([]);
    expect(fileDataRanges(fd, 3, 3, 1)).toEqual([]);
  });

  it('stops at maxRanges (the rest is unknown to the caller)', () => {
    expect(fileDataRanges(fd, 0, 16 * MiB, 2)).toEqual([
      [1 * MiB, 65536],
      [5 * MiB, 65536],
    ]);
  });

  it('checks its arguments', () => {
    expect(() => fileDataRanges(fd, 10, 5, 1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => fileDataRanges(fd, 0, 10, 0)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => fileDataRanges(fd, -1, 10, 1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => fileDataRanges(fd, 0.5, 10, 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => fileDataRanges('x' as unknown as number, 0, 10, 1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    // A descriptor that is not open (EBADF): the system error, with errno and syscall.
    expect(() => fileDataRanges(1_000_000_000, 0, 10, 1)).toThrow(
      expect.objectContaining({ code: 'ERR_FS_EXTENTS_IO', errno: 9, syscall: 'lseek(SEEK_DATA)' }),
    );
  });
});
