// Write-behind of copy outputs: the native sync_file_range call (native/fs_writeback.cc) and the
// mapping from virtual offsets to the output's files that decides which file is written back.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, openSync, closeSync, readdirSync, readlinkSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { createDisk } from '../../src/vmdk/index.js';
import { nativeWriteback, type NativeWriteback } from '../../src/util/native-writeback.js';
import { MAX_OPEN, WriteBehind, WRITE_BEHIND_STEP } from '../../src/pipeline/write-behind.js';

const MiB = 1 << 20;
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-write-behind-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** The real native call, with the files it was asked to write back recorded by name. */
function recording(): { native: NativeWriteback; files: string[] } {
  const real = nativeWriteback();
  if (!real) throw new Error('the native addon has no writebackStart: rebuild it');
  const files: string[] = [];
  return {
    files,
    native: {
      async writebackStart(fd, offset, length) {
        files.push(basename(readlinkSync(`/proc/self/fd/${fd}`)));
        return real.writebackStart(fd, offset, length);
      },
    },
  };
}

describe('native writebackStart', () => {
  it('starts writeback of a file with dirty pages and resolves to a boolean', async () => {
    const native = nativeWriteback()!;
    const path = join(dir, 'f');
    const fd = openSync(path, 'w');
    try {
      writeSync(fd, Buffer.alloc(MiB, 7), 0, MiB, 0);
      await expect(native.writebackStart(fd, 0, 0)).resolves.toBe(true);
      await expect(native.writebackStart(fd, 4096, MiB)).resolves.toBe(true);
    } finally {
      closeSync(fd);
    }
  });

  it('rejects with ERR_WRITEBACK_IO on a descriptor that is not open', async () => {
    const native = nativeWriteback()!;
    const fd = openSync(join(dir, 'g'), 'w');
    closeSync(fd);
    await expect(native.writebackStart(fd, 0, 0)).rejects.toMatchObject({ code: 'ERR_WRITEBACK_IO', syscall: 'sync_file_range' });
  });

  it('refuses bad arguments with typed errors, synchronously', () => {
    const native = nativeWriteback()!;
    expect(() => native.writebackStart(-1, 0, 0)).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    expect(() => native.writebackStart(0, 1.5, 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => (native.writebackStart as (...a: unknown[]) => unknown)(0, '0', 0)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
  });
});

describe('WriteBehind', () => {
  it('writes back the extent file that received the data, once a step of it is written', async () => {
    // Three 2 GiB flat extents (files stay sparse): data written into the first and third only.
    const disk = await createDisk(join(dir, 'out.vmdk'), { capacity: 5 * 1024 * MiB, subformat: 'twoGbMaxExtentFlat' });
    const { native, files } = recording();
    const wb = WriteBehind.open(disk, native)!;
    try {
      const chunk = Buffer.alloc(4 * MiB, 1);
      for (let off = 0; off < WRITE_BEHIND_STEP - chunk.length; off += chunk.length) {
        await disk.write(off, chunk);
        wb.written(off, chunk.length);
      }
      expect(files).toEqual([]); // less than a step so far
      await disk.write(WRITE_BEHIND_STEP - chunk.length, chunk);
      wb.written(WRITE_BEHIND_STEP - chunk.length, chunk.length);
      const third = 4 * 1024 * MiB;
      for (let off = third; off < third + 2 * WRITE_BEHIND_STEP; off += chunk.length) {
        await disk.write(off, chunk);
        wb.written(off, chunk.length);
      }
    } finally {
      await wb.close();
      await disk.close();
    }
    expect(files[0]).toBe('out-f001.vmdk');
    expect(files.slice(1).every((f) => f === 'out-f003.vmdk')).toBe(true);
    expect(files.length).toBeGreaterThanOrEqual(2);
    expect(files).not.toContain('out-f002.vmdk');
    expect(files).not.toContain('out.vmdk');
  });

  it('maps a raw output to its one file, and a write that spans two extents to both', async () => {
    const raw = await createDisk(join(dir, 'out.img'), { capacity: 64 * MiB, subformat: 'raw' });
    const rec = recording();
    const wb = WriteBehind.open(raw, rec.native)!;
    await raw.write(0, Buffer.alloc(WRITE_BEHIND_STEP, 2));
    wb.written(0, WRITE_BEHIND_STEP);
    await wb.close();
    await raw.close();
    expect(rec.files).toEqual(['out.img']);

    const flat = await createDisk(join(dir, 'two.vmdk'), { capacity: 3 * 1024 * MiB, subformat: 'twoGbMaxExtentFlat' });
    const rec2 = recording();
    const wb2 = WriteBehind.open(flat, rec2.native)!;
    const at = 2 * 1024 * MiB - WRITE_BEHIND_STEP;
    await flat.write(at, Buffer.alloc(2 * WRITE_BEHIND_STEP, 3));
    wb2.written(at, 2 * WRITE_BEHIND_STEP);
    await wb2.close();
    await flat.close();
    expect(rec2.files.sort()).toEqual(['two-f001.vmdk', 'two-f002.vmdk']);
  });

  it('keeps at most MAX_OPEN second handles open, whatever the number of extent files', async () => {
    const extents = MAX_OPEN + 3;
    const disk = await createDisk(join(dir, 'many.vmdk'), { capacity: extents * 2048 * MiB, subformat: 'twoGbMaxExtentFlat' });
    const real = nativeWriteback()!;
    const opened = (): number =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`).startsWith(join(dir, 'many-f'));
        } catch {
          return false;
        }
      }).length;
    let most = 0;
    const files = new Set<string>();
    const native: NativeWriteback = {
      writebackStart(fd, offset, length) {
        files.add(readlinkSync(`/proc/self/fd/${fd}`));
        most = Math.max(most, opened() - extents); // the VMDK layer holds one handle per extent file
        return real.writebackStart(fd, offset, length);
      },
    };
    const wb = WriteBehind.open(disk, native)!;
    try {
      const data = Buffer.alloc(WRITE_BEHIND_STEP, 4);
      for (let e = 0; e < extents; e++) {
        await disk.write(e * 2048 * MiB, data);
        wb.written(e * 2048 * MiB, data.length);
        await new Promise((r) => setTimeout(r, 20)); // let the start run (not needed for correctness)
      }
    } finally {
      await wb.close();
      await disk.close();
    }
    expect(files.size).toBeGreaterThan(MAX_OPEN);
    expect(most).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(MAX_OPEN);
    expect(opened()).toBe(0); // all closed
  });

  it('is left out (null) when the addon has no write-behind call', async () => {
    const disk = await createDisk(join(dir, 'n.img'), { capacity: MiB, subformat: 'raw' });
    try {
      expect(WriteBehind.open(disk, null)).toBeNull();
    } finally {
      await disk.close();
    }
  });
});
