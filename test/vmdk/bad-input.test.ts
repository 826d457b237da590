// Bad input of every kind: each gets a VmdkFormatError with a code and a location, never a crash or a hang.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { openSync, writeSync, closeSync, readFileSync, writeFileSync, truncateSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, openDisk, VmdkFormatError, Descriptor } from '../../src/vmdk/index.js';
import { VmsealError } from '../../src/errors.js';
import { MiB, patternData, run, tempDir, tryRun } from './helpers.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => ({ dir, cleanup } = tempDir()));
afterAll(() => cleanup());

let counter = 0;
const fresh = (ext = 'vmdk') => join(dir, `bad${++counter}.${ext}`);

async function expectError(
  promise: Promise<unknown>,
  code: string,
  where: { file?: string; offset?: boolean; line?: number | boolean } = {},
): Promise<VmdkFormatError> {
  let err: unknown;
  try {
    const disk = await promise;
    if (disk && typeof (disk as { close?: unknown }).close === 'function') await (disk as { close(): Promise<void> }).close();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(VmdkFormatError);
  const e = err as VmdkFormatError;
  expect(e).toBeInstanceOf(VmsealError);
  expect(e.code, e.message).toBe(code);
  if (where.file) {
    expect(e.file).toBe(where.file);
    expect(e.message).toContain(where.file);
  }
  if (where.offset) expect(typeof e.offset).toBe('number');
  if (typeof where.line === 'number') expect(e.line).toBe(where.line);
  else if (where.line) expect(typeof e.line).toBe('number');
  return e;
}

/**
 * Grain tables are checked when first used (docs/format.md): the disk opens, and the first read of
 * the table's range fails. check: 'full' reads every table at open and fails there.
 */
function readsBadTable(path: string): Promise<unknown> {
  return openDisk(path, { readOnly: true }).then((disk) => disk.read(0, 65536 * 2).finally(() => disk.close()));
}

function patch(path: string, offset: number, bytes: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, offset);
  closeSync(fd);
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}

interface Layout {
  gd: number;
  rgd: number;
  gt0: number;
  grain0: number;
  grain1: number;
}

/** A 4 MiB monolithicSparse disk with the first two grains written; returns where its tables are. */
async function sparseImage(): Promise<{ path: string; layout: Layout }> {
  const path = fresh();
  const disk = await createDisk(path, { capacity: 4 * MiB, subformat: 'monolithicSparse' });
  await disk.write(0, patternData(2 * 65536, 3));
  await disk.close();
  const buf = readFileSync(path);
  const gd = Number(buf.readBigUInt64LE(56));
  const rgd = Number(buf.readBigUInt64LE(48));
  const gt0 = buf.readUInt32LE(gd * 512);
  return { path, layout: { gd, rgd, gt0, grain0: buf.readUInt32LE(gt0 * 512), grain1: buf.readUInt32LE(gt0 * 512 + 4) } };
}

function textDescriptor(extentLines: string[], extra = '', createType = 'monolithicFlat'): string {
  return `# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType="${createType}"\n${extra}\n# Extent description\n${extentLines.join('\n')}\n\n#DDB\nddb.virtualHWVersion = "4"\n`;
}

describe('sparse extents', () => {
  it('a file shorter than the header', async () => {
    const path = fresh();
    writeFileSync(path, Buffer.concat([Buffer.from('KDMV'), Buffer.alloc(96)]));
    await expectError(openDisk(path), 'ERR_VMDK_TRUNCATED', { file: path, offset: true });
  });

  it('wrong magic in a .vmdk', async () => {
    const path = fresh();
    writeFileSync(path, Buffer.alloc(4096, 0x41));
    await expectError(openDisk(path), 'ERR_VMDK_FORMAT', { file: path, offset: true });
  });

  it('unsupported header version', async () => {
    const { path } = await sparseImage();
    patch(path, 4, u32(4));
    const e = await expectError(openDisk(path), 'ERR_VMDK_UNSUPPORTED', { file: path, offset: true });
    expect(e.offset).toBe(4);
  });

  it('mangled newline-detection bytes (qemu does not notice)', async () => {
    const { path } = await sparseImage();
    patch(path, 73, Buffer.from('\n \n\n'));
    const e = await expectError(openDisk(path), 'ERR_VMDK_CORRUPT', { file: path });
    expect(e.offset).toBe(73);
    expect(tryRun('qemu-img', ['check', path]).status).toBe(0);
  });

  it('a grain directory entry past the end of the file', async () => {
    const { path, layout } = await sparseImage();
    patch(path, layout.gd * 512, u32(0x100000));
    const e = await expectError(openDisk(path), 'ERR_VMDK_CORRUPT', { file: path });
    expect(e.offset).toBe(layout.gd * 512);
  });

  it('a grain table entry past the end of the file', async () => {
    const { path, layout } = await sparseImage();
    patch(path, layout.gt0 * 512 + 8, u32(0x200000));
    const e = await expectError(readsBadTable(path), 'ERR_VMDK_CORRUPT', { file: path });
    expect(e.offset).toBe(layout.gt0 * 512 + 8);
    const f = await expectError(openDisk(path, { check: 'full' }), 'ERR_VMDK_CORRUPT', { file: path });
    expect(f.offset).toBe(layout.gt0 * 512 + 8);
  });

  it('a grain pointing into metadata (the grain directory)', async () => {
    const { path, layout } = await sparseImage();
    patch(path, layout.gt0 * 512 + 8, u32(layout.gd));
    const e = await expectError(readsBadTable(path), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
    expect(e.message).toMatch(/points into the grain directory/);
    expect(e.offset).toBe(layout.gt0 * 512 + 8);
    // Into another grain table (qemu's layout: GTs follow the GD).
    patch(path, layout.gt0 * 512 + 8, u32(layout.gt0));
    const t = await expectError(readsBadTable(path), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
    expect(t.message).toMatch(/points into the grain table/);
  });

  it('a grain claimed by two table entries', async () => {
    const { path, layout } = await sparseImage();
    patch(path, layout.gt0 * 512 + 8, u32(layout.grain0));
    // O(data) to find: only the full check looks for it (vmseal verify and repair ask for it).
    const e = await expectError(openDisk(path, { check: 'full' }), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
    expect(e.message).toMatch(/claimed twice/);
  });

  it('a grain table claimed by two directory entries / overlapping the directory', async () => {
    const { path, layout } = await sparseImage();
    patch(path, layout.gd * 512, u32(layout.rgd + 1));
    const e = await expectError(openDisk(path), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
    expect(e.message).toMatch(/overlaps/);
  });

  it('directory and table sizes that would need huge allocations', async () => {
    for (const [off, value, code] of [
      [12, 2n ** 52n, 'ERR_VMDK_LIMIT'], // capacity → 2^52/65536 GD entries
      [44, 2n ** 31n, 'ERR_VMDK_LIMIT'], // numGTEsPerGT
      [20, 3n, 'ERR_VMDK_LIMIT'], // grain size not a power of two
      [36, 2n ** 40n, 'ERR_VMDK_LIMIT'], // descriptorSize
      [12, 2n ** 60n, 'ERR_VMDK_LIMIT'], // capacity beyond 2^53
    ] as const) {
      const { path } = await sparseImage();
      const b = Buffer.alloc(off === 44 ? 4 : 8);
      if (off === 44) b.writeUInt32LE(Number(value));
      else b.writeBigUInt64LE(value);
      patch(path, off, b);
      const e = await expectError(openDisk(path), code, { file: path });
      expect(e.offset).toBe(off);
    }
  });

  it('a file truncated inside a grain: vmseal refuses, qemu reads zeros', async () => {
    const { path, layout } = await sparseImage();
    truncateSync(path, layout.grain1 * 512 + 1000);
    const e = await expectError(readsBadTable(path), 'ERR_VMDK_TRUNCATED', { file: path, offset: true });
    expect(e.offset).toBe(layout.gt0 * 512 + 4);
    // qemu-img check finds nothing, and qemu reads the lost bytes as zeros (silent wrong output).
    expect(tryRun('qemu-img', ['check', path]).status).toBe(0);
    const out = join(dir, 'trunc.raw');
    run('qemu-img', ['convert', '-O', 'raw', path, out]);
    const lost = readFileSync(out).subarray(65536 + 2000, 2 * 65536);
    expect(lost.every((b) => b === 0)).toBe(true);
    expect(
      patternData(2 * 65536, 3)
        .subarray(65536 + 2000)
        .every((b) => b === 0),
    ).toBe(false);
  });

  it('capacity in the header disagreeing with the extent line', async () => {
    const { path } = await sparseImage();
    const buf = readFileSync(path);
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(buf.readBigUInt64LE(12)) * 2n);
    patch(path, 12, b);
    const e = await expectError(openDisk(path), 'ERR_VMDK_CORRUPT', { file: path, line: true });
    expect(e.message).toMatch(/capacity disagrees/);
  });

  it('the data file of a vmfsSparse (COWD) or seSparse disk opened alone is refused: it holds no descriptor', async () => {
    const cowd = fresh();
    writeFileSync(cowd, Buffer.concat([Buffer.from('COWD'), Buffer.alloc(2044)]));
    await expectError(openDisk(cowd), 'ERR_VMDK_UNSUPPORTED', { file: cowd });
    const se = fresh();
    const b = Buffer.alloc(2048);
    b.writeUInt32LE(0xcafebabe, 0);
    writeFileSync(se, b);
    await expectError(openDisk(se), 'ERR_VMDK_UNSUPPORTED', { file: se });
  });
});

describe('streamOptimized', () => {
  async function streamImage(): Promise<string> {
    const path = fresh();
    const d = await createDisk(path, { capacity: 2 * MiB, subformat: 'streamOptimized' });
    await d.write(0, patternData(2 * MiB, 4));
    await d.close();
    return path;
  }

  it('a missing footer (file cut short)', async () => {
    const path = await streamImage();
    truncateSync(path, statSync(path).size - 1024);
    await expectError(openDisk(path), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
  });

  it('a compressed grain that does not inflate is an error when read, not zeros', async () => {
    const path = await streamImage();
    const buf = readFileSync(path);
    const overHead = Number(buf.readBigUInt64LE(64));
    // Grain 0 is at overHead: u64 lba, u32 size, zlib data. Spoil the zlib stream.
    patch(path, overHead * 512 + 12 + 100, Buffer.alloc(64, 0xff));
    const disk = await openDisk(path, { readOnly: true });
    await expectError(disk.read(0, 4096), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
    expect((await disk.read(MiB, 4096)).equals(patternData(2 * MiB, 4).subarray(MiB, MiB + 4096))).toBe(true);
    await disk.close();
  });

  it('a grain marker for the wrong sector, and an absurd compressed size', async () => {
    const path = await streamImage();
    const overHead = Number(readFileSync(path).readBigUInt64LE(64));
    const lba = Buffer.alloc(8);
    lba.writeBigUInt64LE(12345n);
    patch(path, overHead * 512, lba);
    const disk = await openDisk(path, { readOnly: true });
    await expectError(disk.read(0, 512), 'ERR_VMDK_CORRUPT', { file: path, offset: true });
    await disk.close();
    const p2 = await streamImage();
    patch(p2, overHead * 512 + 8, u32(0x7fffffff));
    const d2 = await openDisk(p2, { readOnly: true });
    await expectError(d2.read(0, 512), 'ERR_VMDK_CORRUPT', { file: p2, offset: true });
    await d2.close();
  });

  it('writes to an existing streamOptimized disk are refused', async () => {
    const path = await streamImage();
    const disk = await openDisk(path);
    await expectError(disk.write(0, Buffer.alloc(512)), 'ERR_VMDK_READ_ONLY', { file: path });
    await disk.close();
  });
});

describe('descriptors and extent files', () => {
  it('a descriptor over the size limit', async () => {
    const path = fresh();
    writeFileSync(path, textDescriptor(['RW 2048 ZERO']) + '#'.repeat(1 << 20) + '\n');
    await expectError(openDisk(path), 'ERR_VMDK_LIMIT', { file: path });
  });

  it('invalid UTF-8, and a declared encoding other than UTF-8', async () => {
    const path = fresh();
    const text = Buffer.from(textDescriptor(['RW 2048 ZERO'], 'ddb.comment = "caf\u00e9"\n'));
    const bad = Buffer.concat([text.subarray(0, text.indexOf('caf') + 3), Buffer.from([0xe9, 0x22]), text.subarray(text.indexOf('caf') + 6)]);
    writeFileSync(path, bad);
    const e = await expectError(openDisk(path), 'ERR_VMDK_ENCODING', { file: path, line: 6 });
    expect(e.offset).toBe(bad.indexOf(0xe9));
    const gbk = fresh();
    writeFileSync(gbk, textDescriptor(['RW 2048 ZERO'], 'encoding="GBK"\n'));
    await expectError(openDisk(gbk), 'ERR_VMDK_ENCODING', { file: gbk, line: 6 });
  });

  it('too many extent lines', async () => {
    const path = fresh();
    writeFileSync(path, textDescriptor(Array.from({ length: 10000 }, () => 'RW 1 ZERO')));
    await expectError(openDisk(path), 'ERR_VMDK_LIMIT', { file: path });
  });

  it('a missing extent file', async () => {
    const path = fresh();
    writeFileSync(path, textDescriptor(['RW 2048 FLAT "nowhere-flat.vmdk" 0']));
    await expectError(openDisk(path), 'ERR_VMDK_EXTENT_FILE', { file: path, line: 8 });
  });

  it('absolute and climbing extent file names', async () => {
    for (const name of ['/etc/passwd', '../../etc/passwd', 'sub/../../x.vmdk', 'C:\\Windows\\disk.vmdk', '..']) {
      const path = fresh();
      writeFileSync(path, textDescriptor([`RW 1 FLAT "${name}" 0`]));
      const e = await expectError(openDisk(path), 'ERR_VMDK_EXTENT_FILE', { file: path, line: 8 });
      expect(e.message).toMatch(/absolute|leaves the disk's folder/);
    }
  });

  it('a symbolic link that leads an extent out of the folder', async () => {
    const { dir: other, cleanup: done } = tempDir();
    try {
      writeFileSync(join(other, 'outside-flat.vmdk'), Buffer.alloc(512));
      symlinkSync(join(other, 'outside-flat.vmdk'), join(dir, 'link-flat.vmdk'));
      const path = fresh();
      writeFileSync(path, textDescriptor(['RW 1 FLAT "link-flat.vmdk" 0']));
      const e = await expectError(openDisk(path), 'ERR_VMDK_EXTENT_FILE', { file: path, line: 8 });
      expect(e.message).toMatch(/link/);
    } finally {
      done();
    }
  });

  it('a flat extent file shorter than its extent', async () => {
    const path = fresh();
    writeFileSync(join(dir, 'short-flat.vmdk'), Buffer.alloc(1000));
    writeFileSync(path, textDescriptor(['RW 2048 FLAT "short-flat.vmdk" 0']));
    await expectError(openDisk(path), 'ERR_VMDK_TRUNCATED', { file: path, line: 8 });
  });

  it('malformed lines, duplicate keys, unsupported subformats and extent types', async () => {
    const cases: Array<[string, string, number | undefined]> = [
      [textDescriptor(['RW abc FLAT "x" 0']), 'ERR_VMDK_FORMAT', 8],
      [textDescriptor(['RW 2048 ZERO'], 'CID=87654321\n'), 'ERR_VMDK_FORMAT', 6],
      [textDescriptor(['RW 2048 ZERO'], 'this is not a descriptor line\n'), 'ERR_VMDK_FORMAT', 6],
      [textDescriptor(['RW 2048 ZERO'], 'ddb.x = "unbalanced\n'), 'ERR_VMDK_FORMAT', 6],
      [textDescriptor(['RW 2048 VMFSSPARSE "a-delta.vmdk"'], '', 'vmfsSparse'), 'ERR_VMDK_READ_ONLY', undefined],
      [textDescriptor(['RW 2048 SESPARSE "a-sesparse.vmdk"'], '', 'seSparse'), 'ERR_VMDK_READ_ONLY', undefined],
      [textDescriptor(['RW 2048 SESPARSE "a-sesparse.vmdk"'], '', 'monolithicFlat'), 'ERR_VMDK_FORMAT', 8],
      [textDescriptor(['RW 2048 FLAT "a-flat.vmdk" 0'], '', 'seSparse'), 'ERR_VMDK_FORMAT', 8],
      [textDescriptor(['RW 2048 ZERO'], '', 'vmfsRaw'), 'ERR_VMDK_UNSUPPORTED', undefined],
      [textDescriptor(['NOACCESS 2048 ZERO']), 'ERR_VMDK_UNSUPPORTED', 8],
      [textDescriptor([]), 'ERR_VMDK_FORMAT', undefined],
      [textDescriptor(['RW 2048 ZERO']).replace('version=1', 'version=7'), 'ERR_VMDK_FORMAT', 2],
      [textDescriptor(['RW 2048 ZERO']).replace('parentCID=ffffffff', 'parentCID=12345678'), 'ERR_VMDK_UNSUPPORTED', undefined],
    ];
    for (const [text, code, line] of cases) {
      const path = fresh();
      writeFileSync(path, text);
      const e = await expectError(openDisk(path), code, { file: path });
      if (line !== undefined) expect(e.line, e.message).toBe(line);
    }
  });

  it('a descriptor whose only extent is ZERO or RDONLY: qemu-img aborts, vmseal works', async () => {
    const zero = fresh();
    writeFileSync(zero, textDescriptor(['RW 2048 ZERO']));
    const q1 = tryRun('qemu-img', ['info', zero]);
    expect(q1.status === 0 && q1.signal === null).toBe(false);
    const d1 = await openDisk(zero);
    expect(d1.capacity).toBe(2048 * 512);
    expect((await d1.read(0, d1.capacity)).every((b) => b === 0)).toBe(true);
    const ranges: unknown[] = [];
    for await (const r of d1.allocatedRanges()) ranges.push(r);
    expect(ranges).toEqual([]);
    await expectError(d1.write(0, Buffer.alloc(512)), 'ERR_VMDK_READ_ONLY');
    await d1.close();

    const ro = fresh();
    const data = patternData(MiB, 9);
    writeFileSync(join(dir, 'ro-flat.vmdk'), data);
    writeFileSync(ro, textDescriptor(['RDONLY 2048 FLAT "ro-flat.vmdk" 0']));
    const q2 = tryRun('qemu-img', ['convert', '-O', 'raw', ro, join(dir, 'ro.raw')]);
    expect(q2.status === 0 && q2.signal === null).toBe(false);
    const d2 = await openDisk(ro);
    expect((await d2.read(0, MiB)).equals(data)).toBe(true);
    await expectError(d2.write(0, Buffer.alloc(512)), 'ERR_VMDK_READ_ONLY');
    await d2.close();
  });

  it('an extent that names the descriptor itself, and one sparse file used twice', async () => {
    const path = fresh();
    const name = path.split('/').pop()!;
    writeFileSync(path, textDescriptor([`RW 1 FLAT "${name}" 0`]));
    await expectError(openDisk(path), 'ERR_VMDK_EXTENT_FILE', { file: path, line: 8 });
    const { path: sparse } = await sparseImage();
    const sname = sparse.split('/').pop()!;
    const twice = fresh();
    writeFileSync(twice, textDescriptor([`RW 8192 SPARSE "${sname}"`, `RW 8192 SPARSE "${sname}"`], '', 'twoGbMaxExtentSparse'));
    await expectError(openDisk(twice), 'ERR_VMDK_CORRUPT', { file: twice, line: 9 });
  });

  it('Descriptor.parse errors carry the line', () => {
    expect(() => Descriptor.parse('version=1\ncreateType="monolithicFlat"\nRW 1 FLAT "a" 0\nRW 1 FLAT\n')).toThrowError(VmdkFormatError);
    let caught: unknown;
    try {
      Descriptor.parse('version=1\ncreateType="x"\nRW 1 ZERO\nRW 5\n', { file: '/d.vmdk' });
    } catch (e) {
      caught = e;
    }
    expect(caught).toBeInstanceOf(VmdkFormatError);
    expect((caught as VmdkFormatError).line).toBe(4);
    expect((caught as VmdkFormatError).file).toBe('/d.vmdk');
  });
});
