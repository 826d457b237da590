// Inline I/O (src/util/inline-io.ts, native/fs_nowait.cc): small reads and writes done on the event
// loop when they cannot wait for a device, and HostFile's use of them.
import { describe, it, expect, beforeAll, afterAll, afterEach, vi } from 'vitest';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, statfsSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes, randomInt } from 'node:crypto';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeNowait } from '../../src/util/native-nowait.js';
import { INLINE_IO_MAX, inlineIoSettings, isMemoryBacked, readInline, writeInline } from '../../src/util/inline-io.js';
import { HostFile } from '../../src/vmdk/file.js';

const SIZE = 1 << 20;
const tmpOnTmpfs = statfsSync(tmpdir()).type === 0x01021994;
let dir: string;
let shmDir: string | undefined;
let data: Buffer;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-inline-'));
  data = randomBytes(SIZE);
  writeFileSync(join(dir, 'data.bin'), data); // just written: in the page cache
  if (existsSync('/dev/shm')) {
    shmDir = mkdtempSync('/dev/shm/vmseal-inline-');
    writeFileSync(join(shmDir, 'data.bin'), data);
  }
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
  if (shmDir) rmSync(shmDir, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

describe('native preadNowait', () => {
  const native = (): NonNullable<ReturnType<typeof nativeNowait>> => {
    const n = nativeNowait();
    if (!n) throw new Error('the native addon has no preadNowait: rebuild it');
    return n;
  };

  it('reads cached bytes exactly as read(2) does, at random offsets and lengths', () => {
    const fd = openSync(join(dir, 'data.bin'), 'r');
    try {
      for (let i = 0; i < 200; i++) {
        const length = randomInt(1, INLINE_IO_MAX + 1);
        const position = randomInt(0, SIZE - length + 1);
        const target = Buffer.alloc(length);
        const n = native().preadNowait(fd, target, position);
        // -1 only where the file system has no RWF_NOWAIT; a cached ext4/xfs/btrfs file reads in full.
        if (n === -1) continue;
        expect(n).toBe(length);
        expect(target.equals(data.subarray(position, position + length))).toBe(true);
      }
    } finally {
      closeSync(fd);
    }
  });

  it('returns a short count at the end of the file and 0 past it', () => {
    const fd = openSync(join(dir, 'data.bin'), 'r');
    try {
      const target = Buffer.alloc(4096);
      const n = native().preadNowait(fd, target, SIZE - 100);
      if (n !== -1) {
        expect(n).toBe(100);
        expect(target.subarray(0, 100).equals(data.subarray(SIZE - 100))).toBe(true);
        expect(native().preadNowait(fd, target, SIZE + 4096)).toBe(0);
      }
      expect(native().preadNowait(fd, Buffer.alloc(0), 0)).toBe(0);
    } finally {
      closeSync(fd);
    }
  });

  it('throws ERR_NOWAIT_IO with errno and syscall on a descriptor that is not open', () => {
    const fd = openSync(join(dir, 'data.bin'), 'r');
    closeSync(fd);
    expect(() => native().preadNowait(fd, Buffer.alloc(16), 0)).toThrow(expect.objectContaining({ code: 'ERR_NOWAIT_IO', errno: 9, syscall: 'preadv2' }));
  });

  it('refuses bad arguments with typed errors', () => {
    const call = native().preadNowait as (...a: unknown[]) => unknown;
    expect(() => call(-1, Buffer.alloc(1), 0)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: 'fd is out of range' }));
    expect(() => call(0, new Uint16Array(4), 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: 'target must be a Uint8Array' }));
    expect(() => call(0, 'x', 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => call(0, Buffer.alloc(1), 1.5)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: 'position must be an integer' }));
    expect(() => call(0, Buffer.alloc(1), -1)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE', message: 'position is out of range' }));
    expect(() => call(0, Buffer.alloc(1))).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE', message: 'position must be a number' }));
  });
});

describe('readInline and writeInline', () => {
  it('tells memory-backed file systems from others', async () => {
    expect(await isMemoryBacked(join(dir, 'data.bin'))).toBe(tmpOnTmpfs);
    if (shmDir) expect(await isMemoryBacked(join(shmDir, 'data.bin'))).toBe(true);
    expect(await isMemoryBacked(join(dir, 'missing'))).toBe(false);
  });

  it('reads a memory-backed file synchronously, short at its end', () => {
    if (!shmDir) return;
    const fd = openSync(join(shmDir, 'data.bin'), 'r');
    try {
      const target = Buffer.alloc(8192);
      expect(readInline(fd, target, 12345, true)).toBe(8192);
      expect(target.equals(data.subarray(12345, 12345 + 8192))).toBe(true);
      expect(readInline(fd, target, SIZE - 10, true)).toBe(10);
    } finally {
      closeSync(fd);
    }
  });

  it.skipIf(tmpOnTmpfs)('leaves a read to the pool (undefined) unless it was read in full', () => {
    const fd = openSync(join(dir, 'data.bin'), 'r');
    try {
      // At the end of the file the count is short: the pool read tells the end from an uncached part.
      expect(readInline(fd, Buffer.alloc(4096), SIZE - 100, false)).toBeUndefined();
    } finally {
      closeSync(fd);
    }
  });

  it('reports an I/O error as Node does (code, errno, syscall)', () => {
    const fd = openSync(join(dir, 'data.bin'), 'r');
    closeSync(fd);
    if (nativeNowait()) expect(() => readInline(fd, Buffer.alloc(16), 0, false)).toThrow(expect.objectContaining({ code: 'EBADF', syscall: 'preadv2' }));
    expect(() => readInline(fd, Buffer.alloc(16), 0, true)).toThrow(expect.objectContaining({ code: 'EBADF' }));
  });

  it('writes all of the data', () => {
    const path = join(dir, 'w.bin');
    const fd = openSync(path, 'w+');
    try {
      writeInline(fd, data.subarray(0, 10000), 5);
    } finally {
      closeSync(fd);
    }
    const back = readFileSync(path);
    expect(back.length).toBe(10005);
    expect(back.subarray(5).equals(data.subarray(0, 10000))).toBe(true);
  });
});

describe('HostFile inline I/O', () => {
  /** Count the reads and writes that go through a FileHandle (the thread pool). */
  async function poolCalls(): Promise<{ reads: number; writes: number }> {
    const probe = await open(process.execPath, 'r');
    const proto = Object.getPrototypeOf(probe) as { read: (...a: unknown[]) => unknown; write: (...a: unknown[]) => unknown };
    await probe.close();
    const calls = { reads: 0, writes: 0 };
    const read = proto.read;
    const write = proto.write;
    vi.spyOn(proto, 'read').mockImplementation(function (this: unknown, ...a: unknown[]) {
      calls.reads++;
      return read.apply(this, a);
    });
    vi.spyOn(proto, 'write').mockImplementation(function (this: unknown, ...a: unknown[]) {
      calls.writes++;
      return write.apply(this, a);
    });
    return calls;
  }

  it('reads and writes small requests on tmpfs without the thread pool, large ones through it', async () => {
    if (!shmDir) return;
    const file = await HostFile.open(join(shmDir, 'data.bin'), true);
    try {
      const calls = await poolCalls();
      const small = Buffer.alloc(4096);
      expect(await file.readAt(small, 4096 * 7)).toBe(4096);
      expect(small.equals(data.subarray(4096 * 7, 4096 * 8))).toBe(true);
      await file.writeAt(Buffer.alloc(4096, 0xab), 0);
      expect(calls).toEqual({ reads: 0, writes: 0 });
      const large = Buffer.alloc(INLINE_IO_MAX + 512);
      expect(await file.readAt(large, 0)).toBe(large.length);
      expect(large.subarray(0, 4096).every((b) => b === 0xab)).toBe(true);
      expect(large.subarray(4096).equals(data.subarray(4096, large.length))).toBe(true);
      await file.writeAt(large, SIZE); // grows the file
      expect(calls.reads).toBeGreaterThan(0);
      expect(calls.writes).toBeGreaterThan(0);
      expect(file.size).toBe(SIZE + large.length);
    } finally {
      await file.close();
    }
  });

  // Where RWF_NOWAIT works on the temporary folder's file system (ext4, xfs, btrfs; not tmpfs).
  it.skipIf(tmpOnTmpfs)('reads cached data of other file systems inline, writes through the pool', async () => {
    if (!nativeNowait()) return;
    const path = join(dir, 'cached.bin');
    writeFileSync(path, data);
    const file = await HostFile.open(path, true);
    try {
      const calls = await poolCalls();
      const small = Buffer.alloc(512);
      expect(await file.readAt(small, 1000)).toBe(512);
      expect(small.equals(data.subarray(1000, 1512))).toBe(true);
      await file.writeAt(small, 0);
      expect(calls.writes).toBe(1);
      // The end of the file: inline gives a short count, so the pool read decides.
      const tail = Buffer.alloc(4096);
      expect(await file.readAt(tail, SIZE - 10)).toBe(10);
      // Two FileHandle reads, both for the tail (10 bytes, then 0: the end): the first read needed none.
      expect(calls.reads).toBe(2);
    } finally {
      await file.close();
    }
  });

  /** Count the size changes and syncs that go through a FileHandle (the thread pool). */
  async function poolMetadataCalls(): Promise<{ truncate: number; sync: number; datasync: number }> {
    const probe = await open(process.execPath, 'r');
    type Fn = (...a: unknown[]) => unknown;
    const proto = Object.getPrototypeOf(probe) as { truncate: Fn; sync: Fn; datasync: Fn };
    await probe.close();
    const calls = { truncate: 0, sync: 0, datasync: 0 };
    for (const name of ['truncate', 'sync', 'datasync'] as const) {
      const real = proto[name];
      vi.spyOn(proto, name).mockImplementation(function (this: unknown, ...a: unknown[]) {
        calls[name]++;
        return real.apply(this, a);
      });
    }
    return calls;
  }

  it('grows and syncs a tmpfs file without the thread pool; shrinks it, and syncs other files, through it', async () => {
    if (!shmDir) return;
    const path = join(shmDir, 'grown.bin');
    const file = await HostFile.create(path, { overwrite: false });
    try {
      const calls = await poolMetadataCalls();
      await file.truncate(3 * 65536);
      await file.writeAt(Buffer.alloc(4096, 0xcd), 65536);
      await file.datasync();
      await file.sync();
      expect(calls).toEqual({ truncate: 0, sync: 0, datasync: 0 });
      expect(statSync(path).size).toBe(3 * 65536);
      expect(file.size).toBe(3 * 65536);
      await file.truncate(65536 + 4096); // shrinking frees pages: through the pool
      expect(calls.truncate).toBe(1);
      expect(statSync(path).size).toBe(65536 + 4096);
      expect(
        readFileSync(path)
          .subarray(65536)
          .every((b) => b === 0xcd),
      ).toBe(true);
    } finally {
      await file.close();
    }
    vi.restoreAllMocks();
    if (tmpOnTmpfs) return;
    const onDisk = await HostFile.create(join(dir, 'grown.bin'), { overwrite: false });
    try {
      const calls = await poolMetadataCalls();
      await onDisk.truncate(65536);
      await onDisk.datasync();
      await onDisk.sync();
      expect(calls).toEqual({ truncate: 1, sync: 1, datasync: 1 });
    } finally {
      await onDisk.close();
    }
  });

  it('sends everything through the pool when inline I/O is turned off (VMSEAL_INLINE_IO=0)', async () => {
    if (!shmDir) return;
    const file = await HostFile.open(join(shmDir, 'data.bin'), true);
    inlineIoSettings.max = 0;
    try {
      const calls = await poolCalls();
      const small = Buffer.alloc(4096);
      expect(await file.readAt(small, 8192)).toBe(4096);
      expect(small.equals(data.subarray(8192, 12288))).toBe(true);
      await file.writeAt(small, 8192);
      expect(calls).toEqual({ reads: 1, writes: 1 });
      vi.restoreAllMocks();
      const metadata = await poolMetadataCalls();
      await file.truncate(SIZE + 65536);
      await file.sync();
      expect(metadata).toEqual({ truncate: 1, sync: 1, datasync: 0 });
    } finally {
      inlineIoSettings.max = INLINE_IO_MAX;
      await file.close();
    }
  });
});
