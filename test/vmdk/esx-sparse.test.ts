// vmfsSparse ("COWD") and seSparse disks, as vSphere writes them for snapshots: read as plain disks
// and as layers of a chain, equal to what qemu-img reads, copied out by `vmseal convert`, never
// written; malformed headers and tables give typed errors.
import { describe, it, expect, beforeAll, afterAll, vi } from 'vitest';
import { createHash } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, createSnapshot, openDisk, ChainDisk, VmdkFormatError, type VirtualDisk } from '../../src/vmdk/index.js';
import { HostFile } from '../../src/vmdk/file.js';
import { GT_CACHE_BYTES, gtCacheSettings } from '../../src/vmdk/sparse-extent.js';
import { buildCowd, buildSeSparse, writeEsxDisk, type EsxGrain } from './esx-sparse.js';
import { MiB, run, tempDir, tryRun, vmdkinfoSize } from './helpers.js';

const CLI = new URL('../../bin/vmseal.js', import.meta.url).pathname;
const CAP = 40 * MiB; // 3 tables of either kind
const SECTORS = CAP / 512;
// ESX writes vmfsSparse grains of one sector, but qemu-img reads a chain through them at ~0.1 ms a
// grain: the chain uses 4 KiB grains, one small plain disk the real 512 bytes.
const COWD_G = 4096;
let dir: string;
let cleanup: () => void;
let baseCid: string;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const fill = (n: number, v: number): Buffer => Buffer.alloc(n, v);

async function readAll(d: VirtualDisk): Promise<Buffer> {
  const out = Buffer.alloc(d.capacity);
  for (let at = 0; at < d.capacity; at += 8 * MiB) await d.readInto(at, out.subarray(at, Math.min(at + 8 * MiB, d.capacity)));
  return out;
}

function qemuRaw(path: string): Buffer {
  const out = join(dir, `q-${Math.random().toString(16).slice(2)}.raw`);
  run('qemu-img', ['convert', '-O', 'raw', path, out]);
  return readFileSync(out);
}

async function rangesOf(d: VirtualDisk): Promise<Array<[number, number]>> {
  const r: Array<[number, number]> = [];
  for await (const x of d.allocatedRanges()) r.push([x.offset, x.length]);
  return r;
}

async function openError(path: string, readOnly = true): Promise<VmdkFormatError> {
  try {
    const d = await openDisk(path, { readOnly });
    try {
      await readAll(d);
    } finally {
      await d.close();
    }
  } catch (err) {
    expect(err).toBeInstanceOf(VmdkFormatError);
    return err as VmdkFormatError;
  }
  throw new Error(`${path} opened and read without error`);
}

// The COWD child's grains: a run of three (in the file: 5, 6, then 4), one far table, the last grain.
const cowdGrains: EsxGrain[] = [
  { index: 5, data: fill(COWD_G, 0x22) },
  { index: 6, data: fill(COWD_G, 0x23) },
  { index: 100, data: fill(COWD_G, 0x24) },
  { index: 4096 * 2 + 7, data: fill(COWD_G, 0x25) },
  { index: 4, data: fill(COWD_G, 0x26) },
  { index: CAP / COWD_G - 1, data: fill(COWD_G, 0x27) },
];
// The seSparse grandchild's 4 KiB grains, with a zeroed and an unmapped grain over the parents' data.
const seGrains: EsxGrain[] = [
  { index: 1, data: fill(4096, 0x33) },
  { index: 4096 + 2, data: fill(4096, 0x34) },
  { index: 3, zero: 'zero' },
  { index: 4096 * 2 + 9, data: fill(4096, 0x35) },
  { index: 10, zero: 'unmapped' },
  { index: 2, data: fill(4096, 0x36) },
];

/** The bytes the chain base ← COWD ← seSparse must read as, from the builders' intent. */
function expected(layers: 'base' | 'cowd' | 'se'): Buffer {
  const b = Buffer.alloc(CAP, 0x11);
  b.fill(0, 30 * MiB); // the base holds only its first 30 MiB
  if (layers === 'base') return b;
  for (const g of cowdGrains) g.data!.copy(b, g.index * COWD_G);
  if (layers === 'cowd') return b;
  for (const g of seGrains) {
    if (g.data) g.data.copy(b, g.index * 4096);
    else b.fill(0, g.index * 4096, (g.index + 1) * 4096);
  }
  return b;
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir());
  const base = await createDisk(join(dir, 'base.vmdk'), { capacity: CAP, subformat: 'monolithicSparse' });
  await base.write(0, fill(30 * MiB, 0x11));
  await base.close();
  baseCid = /^CID=([0-9a-f]+)/m.exec(readFileSync(join(dir, 'base.vmdk'), 'latin1'))![1];
  writeEsxDisk(join(dir, 'snap1.vmdk'), buildCowd(SECTORS, COWD_G / 512, cowdGrains, 'base.vmdk').bytes, {
    createType: 'vmfsSparse',
    capacitySectors: SECTORS,
    cid: 'abcdef01',
    parent: { cid: baseCid, hint: 'base.vmdk' },
  });
  writeEsxDisk(join(dir, 'snap2.vmdk'), buildSeSparse(SECTORS, seGrains).bytes, {
    createType: 'seSparse',
    capacitySectors: SECTORS,
    cid: '12345678',
    parent: { cid: 'abcdef01', hint: 'snap1.vmdk' },
  });
});
afterAll(() => cleanup());

/** A vmfsSparse disk `name` of 512-byte grains (ESX's own) without a parent, its grains placed in the file in the order given; and what it reads as. */
function cowdAlone(name: string, sectors: number, grains: Array<{ index: number; data: Buffer }>): { path: string; want: Buffer } {
  const path = join(dir, `${name}.vmdk`);
  writeEsxDisk(path, buildCowd(sectors, 1, grains).bytes, { createType: 'vmfsSparse', capacitySectors: sectors, cid: '00000001' });
  const want = Buffer.alloc(sectors * 512);
  for (const g of grains) g.data.copy(want, g.index * 512);
  return { path, want };
}

describe('vmfsSparse and seSparse chains', () => {
  it('qemu-img accepts the built files as a chain of the right types', () => {
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', '--backing-chain', join(dir, 'snap2.vmdk')])) as Array<{
      'virtual-size': number;
      'format-specific': { data: { 'create-type': string } };
    }>;
    expect(info.map((i) => i['format-specific'].data['create-type'])).toEqual(['seSparse', 'vmfsSparse', 'monolithicSparse']);
    expect(info.every((i) => i['virtual-size'] === CAP)).toBe(true);
    // libvmdk (20200926) reads the COWD layer too; it has no seSparse ("unsupported extent type")
    expect(vmdkinfoSize(join(dir, 'snap1.vmdk'))).toBe(CAP);
    expect(run('vmdkinfo', [join(dir, 'snap1.vmdk')])).toMatch(/Disk type:\s+VMFS sparse/);
  });

  it('a vmfsSparse child reads its grains over its parent, equal to qemu-img convert', async () => {
    const d = await openDisk(join(dir, 'snap1.vmdk'), { readOnly: true });
    try {
      expect(d).toBeInstanceOf(ChainDisk);
      expect(d.subformat).toBe('vmfsSparse');
      const ours = await readAll(d);
      expect(sha(ours)).toBe(sha(expected('cowd')));
      expect(sha(ours)).toBe(sha(qemuRaw(join(dir, 'snap1.vmdk'))));
      // unaligned reads across grains and tables
      const want = expected('cowd');
      for (const [at, n] of [
        [5 * COWD_G - 7, 2 * COWD_G + 30],
        [(4096 * 2 + 7) * COWD_G - 100, COWD_G],
        [16 * MiB - 10, 20],
      ]) {
        expect((await d.read(at, n)).equals(want.subarray(at, at + n))).toBe(true);
      }
    } finally {
      await d.close();
    }
  });

  it('a seSparse grandchild reads through both parents, zeroed and unmapped grains hide them, equal to qemu-img', async () => {
    const d = await openDisk(join(dir, 'snap2.vmdk'), { readOnly: true });
    try {
      expect(d.subformat).toBe('seSparse');
      expect((d as ChainDisk).layers().map((l) => l.subformat)).toEqual(['seSparse', 'vmfsSparse', 'monolithicSparse']);
      const ours = await readAll(d);
      expect(sha(ours)).toBe(sha(expected('se')));
      expect(sha(ours)).toBe(sha(qemuRaw(join(dir, 'snap2.vmdk'))));
    } finally {
      await d.close();
    }
  });

  it('allocatedRanges of a layer alone lists exactly its data grains', async () => {
    const cowd = await openDisk(join(dir, 'snap1.vmdk'), { readOnly: true, layerOnly: true });
    const se = await openDisk(join(dir, 'snap2.vmdk'), { readOnly: true, layerOnly: true });
    try {
      expect(await rangesOf(cowd)).toEqual([
        [4 * COWD_G, 3 * COWD_G],
        [100 * COWD_G, COWD_G],
        [(4096 * 2 + 7) * COWD_G, COWD_G],
        [CAP - COWD_G, COWD_G],
      ]);
      expect(await rangesOf(se)).toEqual([
        [1 * 4096, 2 * 4096],
        [(4096 + 2) * 4096, 4096],
        [(4096 * 2 + 9) * 4096, 4096],
      ]);
      // alone, a layer's holes read as zeros
      const head = Buffer.concat([Buffer.alloc(4 * COWD_G), fill(COWD_G, 0x26), fill(COWD_G, 0x22), fill(COWD_G, 0x23), Buffer.alloc(COWD_G)]);
      expect((await cowd.read(0, 8 * COWD_G)).equals(head)).toBe(true);
    } finally {
      await cowd.close();
      await se.close();
    }
  });

  it('vmseal convert of the chain top to monolithicSparse and to flat equals the chain', async () => {
    for (const [name, fmt] of [
      ['out-sparse.vmdk', 'monolithicSparse'],
      ['out-flat.vmdk', 'monolithicFlat'],
    ] as const) {
      const r = tryRun(process.execPath, [CLI, 'convert', join(dir, 'snap2.vmdk'), join(dir, name), '--subformat', fmt]);
      expect(r.status, r.stderr).toBe(0);
      expect(sha(qemuRaw(join(dir, name)))).toBe(sha(expected('se')));
    }
  });

  it('vmseal convert without --subformat writes monolithicSparse of 64 KiB grains (not the ESX subformat or grain)', () => {
    const out = join(dir, 'out-default.vmdk');
    const r = tryRun(process.execPath, [CLI, 'convert', join(dir, 'snap2.vmdk'), out]);
    expect(r.status, r.stderr).toBe(0);
    const head = readFileSync(out).subarray(0, 512);
    expect(head.subarray(0, 4).toString('latin1')).toBe('KDMV');
    expect(Number(head.readBigUInt64LE(20))).toBe(128); // grainSize in sectors
    expect(sha(qemuRaw(out))).toBe(sha(expected('se')));
  });

  it('a monolithicSparse child (made by qemu-img) over the ESX layers is written copy-on-write; the ESX files never change', async () => {
    const top = join(dir, 'qtop.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'snap2.vmdk', '-F', 'vmdk', top]);
    const before = ['snap1-delta.vmdk', 'snap2-sesparse.vmdk', 'snap1.vmdk', 'snap2.vmdk'].map((f) => sha(readFileSync(join(dir, f))));
    const want = expected('se');
    const d = await openDisk(top);
    try {
      // a partial grain over COWD data, and one over a seSparse zeroed grain
      for (const [at, v] of [
        [5 * COWD_G + 100, 0x77],
        [3 * 4096 + 10, 0x78],
      ]) {
        const data = fill(300, v);
        await d.write(at, data);
        data.copy(want, at);
      }
      await d.flush();
      expect(sha(await readAll(d))).toBe(sha(want));
    } finally {
      await d.close();
    }
    expect(sha(qemuRaw(top))).toBe(sha(want));
    expect(['snap1-delta.vmdk', 'snap2-sesparse.vmdk', 'snap1.vmdk', 'snap2.vmdk'].map((f) => sha(readFileSync(join(dir, f))))).toEqual(before);
  });

  it('vmseal info shows the chain; vmseal snapshot create on it fails with exit code 1 and says to convert', () => {
    const info = tryRun(process.execPath, [CLI, 'info', '--json', join(dir, 'snap2.vmdk')]);
    expect(info.status, info.stderr).toBe(0);
    const j = JSON.parse(info.stdout) as { subformat: string; chain: Array<{ cid: string }> };
    expect(j.subformat).toBe('seSparse');
    expect(j.chain.map((l) => l.cid)).toEqual(['12345678', 'abcdef01', baseCid]);
    const snap = tryRun(process.execPath, [CLI, 'snapshot', 'create', join(dir, 'snap2.vmdk')]);
    expect(snap.status).toBe(1);
    expect(snap.stderr).toMatch(/vmseal reads seSparse disks but does not write them or take snapshots on them; convert the disk to monolithicSparse first/);
  });

  it('a vmfsSparse disk of 512-byte grains without a parent reads as a plain disk (unallocated grains are zeros)', async () => {
    const sectors = 3 * 4096 + 100; // three tables and a bit
    const grains = [9, 10, 4096, 3 * 4096 + 99, 11].map((index, i) => ({ index, data: fill(512, 0x40 + i) }));
    const { path, want } = cowdAlone('alone', sectors, grains);
    const d = await openDisk(path, { readOnly: true });
    try {
      expect(d).not.toBeInstanceOf(ChainDisk);
      expect(sha(await readAll(d))).toBe(sha(want));
      expect(sha(qemuRaw(path))).toBe(sha(want));
    } finally {
      await d.close();
    }
  });
});

describe('never written', () => {
  it('opening for writing is refused with ERR_VMDK_READ_ONLY saying to convert first', async () => {
    const err = await openError(join(dir, 'snap1.vmdk'), false);
    expect(err.code).toBe('ERR_VMDK_READ_ONLY');
    expect(err.message).toMatch(
      /vmseal reads vmfsSparse disks but does not write them or take snapshots on them; convert the disk to monolithicSparse first \(vmseal convert/,
    );
  });

  it('a snapshot on a vmfsSparse or seSparse top is refused, the files keep their mode', async () => {
    for (const top of ['snap1.vmdk', 'snap2.vmdk']) {
      const before = readFileSync(join(dir, top));
      await expect(createSnapshot(join(dir, top))).rejects.toMatchObject({
        code: 'ERR_VMDK_READ_ONLY',
        message: expect.stringMatching(/does not write them or take snapshots on them/),
      });
      expect(readFileSync(join(dir, top)).equals(before)).toBe(true);
      expect(tryRun('test', ['-w', join(dir, top)]).status).toBe(0);
    }
  });

  it('vmseal snapshot commit of an ESX top, or into an ESX parent, is refused before anything is written', () => {
    const files = ['snap1.vmdk', 'snap1-delta.vmdk', 'snap2.vmdk', 'snap2-sesparse.vmdk', 'base.vmdk'];
    const before = files.map((f) => sha(readFileSync(join(dir, f))));
    for (const top of ['snap2.vmdk', 'snap1.vmdk']) {
      const r = tryRun(process.execPath, [CLI, 'snapshot', 'commit', join(dir, top)]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/vmseal reads (vmfsSparse|seSparse) disks but does not write them/);
      expect(tryRun('test', ['-e', join(dir, `${top}.vmseal-journal`)]).status).toBe(1);
    }
    expect(files.map((f) => sha(readFileSync(join(dir, f))))).toEqual(before);
  });

  it('the bare data file of a delta disk is refused, naming the descriptor to open', async () => {
    for (const f of ['snap1-delta.vmdk', 'snap2-sesparse.vmdk']) {
      const err = await openError(join(dir, f));
      expect(err.code).toBe('ERR_VMDK_UNSUPPORTED');
      expect(err.message).toMatch(/holds no descriptor: open the disk's descriptor file/);
    }
  });
});

/** A copy of a delta disk whose extent bytes `edit` changed, opened alone (no parent needed). */
function variant(name: string, kind: 'vmfsSparse' | 'seSparse', edit: (b: Buffer, built: ReturnType<typeof buildCowd>) => Buffer): string {
  const built = kind === 'vmfsSparse' ? buildCowd(SECTORS, COWD_G / 512, cowdGrains) : buildSeSparse(SECTORS, seGrains);
  const path = join(dir, `${name}.vmdk`);
  writeEsxDisk(path, edit(Buffer.from(built.bytes), built), { createType: kind, capacitySectors: SECTORS, cid: '00000002' });
  return path;
}

describe('malformed vmfsSparse extents', () => {
  const cases: Array<[string, (b: Buffer, x: ReturnType<typeof buildCowd>) => Buffer, string, RegExp]> = [
    ['truncated header', (b) => b.subarray(0, 1000), 'ERR_VMDK_TRUNCATED', /file ends inside the vmfsSparse header/],
    ['wrong magic', (b) => (b.write('KOWD', 0, 'latin1'), b), 'ERR_VMDK_FORMAT', /wrong magic: expected a vmfsSparse extent header "COWD"/],
    ['version 2', (b) => (b.writeUInt32LE(2, 4), b), 'ERR_VMDK_UNSUPPORTED', /version 2/],
    ['grain size 3', (b) => (b.writeUInt32LE(3, 16), b), 'ERR_VMDK_LIMIT', /grainSize 3 sectors/],
    ['grain size 4096', (b) => (b.writeUInt32LE(4096, 16), b), 'ERR_VMDK_LIMIT', /grainSize 4096 sectors/],
    ['huge numGDEntries', (b) => (b.writeUInt32LE(0xffffffff, 24), b), 'ERR_VMDK_LIMIT', /numGDEntries 4294967295/],
    ['too few numGDEntries', (b) => (b.writeUInt32LE(1, 24), b), 'ERR_VMDK_CORRUPT', /does not cover the capacity/],
    ['gdOffset into the header', (b) => (b.writeUInt32LE(1, 20), b), 'ERR_VMDK_CORRUPT', /gdOffset 1 points into the header/],
    ['gdOffset past EOF', (b) => (b.writeUInt32LE(b.length / 512, 20), b), 'ERR_VMDK_TRUNCATED', /grain directory .* past the end of the file/],
    ['capacity unlike the extent line', (b) => (b.writeUInt32LE(SECTORS - 8, 12), b), 'ERR_VMDK_CORRUPT', /capacity disagrees/],
    [
      'table past EOF',
      (b, x) => (b.writeUInt32LE(0x7fffffff, x.gdOffset), b),
      'ERR_VMDK_CORRUPT',
      /grain directory entry 0: the grain table at sector 2147483647 ends past the end of the file/,
    ],
    ['table over the directory', (b, x) => (b.writeUInt32LE(x.gdOffset / 512, x.gdOffset), b), 'ERR_VMDK_CORRUPT', /overlaps the grain directory/],
    [
      'grain into the header',
      (b, x) => (b.writeUInt32LE(2, x.tables.get(0)! + 5 * 4), b),
      'ERR_VMDK_CORRUPT',
      /grain table entry 5: the grain at sector 2 points into the vmfsSparse header/,
    ],
    [
      'grain past EOF',
      (b, x) => (b.writeUInt32LE(b.length / 512, x.tables.get(0)! + 6 * 4), b),
      'ERR_VMDK_CORRUPT',
      /grain table entry 6: .* past the end of the file/,
    ],
    [
      'grain in its own table',
      (b, x) => (b.writeUInt32LE(x.tables.get(0)! / 512 + 1, x.tables.get(0)! + 4 * 4), b),
      'ERR_VMDK_CORRUPT',
      /overlaps its own grain table/,
    ],
  ];
  for (const [name, edit, code, message] of cases) {
    it(`${name}: ${code}`, async () => {
      const path = variant(`cowd-${name.replace(/ /g, '-')}`, 'vmfsSparse', edit);
      const err = await openError(path);
      expect(err.code).toBe(code);
      expect(err.message).toMatch(message);
      expect(err.message).toContain('-delta.vmdk'); // names the file
    });
  }
});

describe('check: full', () => {
  it('finds a bad entry of a table no read touches, at open', async () => {
    const path = variant('cowd-far-bad', 'vmfsSparse', (b, x) => (b.writeUInt32LE(2, x.tables.get(2)! + 100 * 4), b));
    const lazy = await openDisk(path, { readOnly: true });
    await lazy.read(0, 4096);
    await lazy.close();
    await expect(openDisk(path, { readOnly: true, check: 'full' })).rejects.toMatchObject({
      code: 'ERR_VMDK_CORRUPT',
      message: expect.stringMatching(/grain table entry 100:/),
    });
  });
});

/** Walk the whole allocation map of `d` (which decodes every directory and table entry it meets). */
async function mapAll(d: VirtualDisk): Promise<void> {
  for await (const r of d.allocatedRanges()) void r;
}

describe('grain tables claimed twice', () => {
  it('two directory entries naming one table are refused, by a full check and by the allocation map', async () => {
    // Left alone, every entry naming one table would map the whole capacity from one table's grains.
    const path = variant('cowd-table-twice', 'vmfsSparse', (b, x) => (b.writeUInt32LE(b.readUInt32LE(x.gdOffset), x.gdOffset + 4), b));
    const claimed = {
      code: 'ERR_VMDK_CORRUPT',
      message: expect.stringMatching(/grain directory entries 0 and 1 both name the grain table at offset \d+ \(tables claimed twice\)/),
    };
    await expect(openDisk(path, { readOnly: true, check: 'full' })).rejects.toMatchObject(claimed);
    const d = await openDisk(path, { readOnly: true });
    try {
      await expect(mapAll(d)).rejects.toMatchObject(claimed);
    } finally {
      await d.close();
    }
  });
});

describe('grains named twice', () => {
  it('a table whose entries all name one grain maps more than the file holds: refused on read, by a full check and by the allocation map', async () => {
    // Left alone, 4096 entries naming one 4 KiB grain would read 16 MiB of "data" from a file of 100 KiB.
    const path = variant('cowd-grain-twice', 'vmfsSparse', (b, x) => {
      const table = x.tables.get(0)!;
      const sector = x.grains.get(5)! / 512;
      for (let i = 0; i < 4096; i++) b.writeUInt32LE(sector, table + i * 4);
      return b;
    });
    const named = {
      code: 'ERR_VMDK_CORRUPT',
      message: expect.stringMatching(/grain directory entry 0: .*more than the \d+-byte file holds \(grains named twice\)/),
    };
    await expect(openDisk(path, { readOnly: true, check: 'full' })).rejects.toMatchObject(named);
    const d = await openDisk(path, { readOnly: true });
    try {
      await expect(d.read(0, 4096)).rejects.toMatchObject(named);
      await expect(mapAll(d)).rejects.toMatchObject(named);
    } finally {
      await d.close();
    }
  });

  it('a table reloaded after the cache dropped it is counted once: a full file reads whole', async () => {
    // Every grain of table 0 allocated: the grains fill the file, so counting a table twice would refuse it.
    const sectors = 2 * 4096;
    const grains = Array.from({ length: sectors }, (_, index) => ({ index, data: fill(512, index & 0xff) }));
    const { path, want } = cowdAlone('cowd-full', sectors, grains);
    gtCacheSettings.bytes = 16384; // one table (and nothing else) fits
    const d = await openDisk(path, { readOnly: true });
    try {
      // Alternating tables: each read reloads the table the one before it dropped.
      const span = 4096 * 512;
      for (let i = 0; i < 6; i++) {
        const at = (i % 2) * span;
        expect((await d.read(at, span)).equals(want.subarray(at, at + span))).toBe(true);
      }
    } finally {
      gtCacheSettings.bytes = GT_CACHE_BYTES;
      await d.close();
    }
  });
});

describe('grain reads in flight', () => {
  it('a read of thousands of scattered 512-byte grains keeps at most 8 file reads in flight, and reads them all', async () => {
    // Grains placed in reverse order in the file: no two neighbours are one run, each is its own read.
    const sectors = 4096;
    const grains = Array.from({ length: sectors }, (_, i) => ({ index: sectors - 1 - i, data: fill(512, (sectors - 1 - i) % 251) }));
    const { path, want } = cowdAlone('cowd-scattered', sectors, grains);
    const d = await openDisk(path, { readOnly: true });
    let inFlight = 0;
    let most = 0;
    let reads = 0;
    const real = HostFile.prototype.readExact;
    const spy = vi.spyOn(HostFile.prototype, 'readExact').mockImplementation(async function (this: HostFile, ...args) {
      inFlight++;
      reads++;
      most = Math.max(most, inFlight);
      try {
        await real.apply(this, args);
      } finally {
        inFlight--;
      }
    });
    try {
      expect((await d.read(0, sectors * 512)).equals(want)).toBe(true);
      expect(reads).toBeGreaterThanOrEqual(sectors);
      expect(most).toBeLessThanOrEqual(8);
    } finally {
      spy.mockRestore();
      await d.close();
    }
  });
});

describe('malformed seSparse extents', () => {
  const u64 = (b: Buffer, at: number, v: bigint): Buffer => (b.writeBigUInt64LE(v, at), b);
  const cases: Array<[string, (b: Buffer, x: ReturnType<typeof buildCowd>) => Buffer, string, RegExp]> = [
    ['truncated header', (b) => b.subarray(0, 300), 'ERR_VMDK_TRUNCATED', /file ends inside the seSparse const header/],
    ['wrong magic', (b) => u64(b, 0, 0xcafebabfn), 'ERR_VMDK_FORMAT', /wrong magic: expected a seSparse const header/],
    ['version', (b) => u64(b, 8, 0x100000001n), 'ERR_VMDK_UNSUPPORTED', /unsupported seSparse version 0x100000001/],
    ['grain size', (b) => u64(b, 24, 16n), 'ERR_VMDK_UNSUPPORTED', /grainSize 16/],
    ['flags', (b) => u64(b, 40, 1n), 'ERR_VMDK_UNSUPPORTED', /unknown seSparse flags/],
    ['huge capacity', (b) => u64(b, 16, 1n << 50n), 'ERR_VMDK_LIMIT', /beyond the limit of 64 TiB/],
    ['capacity beyond 2^53', (b) => u64(b, 16, 1n << 60n), 'ERR_VMDK_LIMIT', /capacity is \d+, beyond 2\^53/],
    ['directory too small', (b) => u64(b, 136, 0n), 'ERR_VMDK_CORRUPT', /grainDirSize 0 sectors does not cover the capacity/],
    ['directory into the header', (b) => u64(b, 128, 0n), 'ERR_VMDK_CORRUPT', /grainDirOffset 0 points into the const header/],
    ['directory past EOF', (b) => u64(b, 128, BigInt(b.length / 512)), 'ERR_VMDK_TRUNCATED', /grainDirOffset .* past the end of the file/],
    ['areas overlap', (b) => u64(b, 192, b.readBigUInt64LE(144)), 'ERR_VMDK_CORRUPT', /seSparse area at grainsOffset .* overlaps the one at grainTablesOffset/],
    ['journal to replay', (b) => u64(b, 512 + 24, 1n), 'ERR_VMDK_UNSUPPORTED', /journal must be replayed/],
    ['volatile magic', (b) => u64(b, 512, 0n), 'ERR_VMDK_FORMAT', /seSparse volatile header/],
    [
      'directory entry not a table',
      (b, x) => u64(b, x.gdOffset, 0x2000000000000000n),
      'ERR_VMDK_CORRUPT',
      /grain directory entry 0 is 0x20000000.*not a table/,
    ],
    ['table index past the area', (b, x) => u64(b, x.gdOffset, 0x1000000000000000n | 999n), 'ERR_VMDK_CORRUPT', /table 999 is past the grain-table area/],
    [
      'grain index past the area',
      (b, x) => u64(b, x.tables.get(0)! + 8, 0x3000ffffffffffffn),
      'ERR_VMDK_CORRUPT',
      /grain table entry 1 .* past the grain area/,
    ],
    ['grain past EOF', (b, x) => b.subarray(0, x.grains.get(1)! + 100), 'ERR_VMDK_CORRUPT', /past the end of the file/],
    ['unknown entry type', (b, x) => u64(b, x.tables.get(0)! + 8, 0x7000000000000000n), 'ERR_VMDK_CORRUPT', /unknown type 7/],
    ['hole with bits', (b, x) => u64(b, x.tables.get(0)! + 0, 5n), 'ERR_VMDK_CORRUPT', /type 0 \(not allocated\) but other bits set/],
  ];
  for (const [name, edit, code, message] of cases) {
    it(`${name}: ${code}`, async () => {
      const path = variant(`se-${name.replace(/ /g, '-')}`, 'seSparse', edit);
      const err = await openError(path);
      expect(err.code).toBe(code);
      expect(err.message).toMatch(message);
      expect(err.message).toContain('-sesparse.vmdk');
    });
  }
});

describe('descriptors', () => {
  it('a SESPARSE extent in a vmfsSparse disk, or the reverse, is ERR_VMDK_FORMAT', async () => {
    const path = join(dir, 'mixed.vmdk');
    writeFileSync(join(dir, 'mixed-delta.vmdk'), buildCowd(SECTORS, 1, []).bytes);
    writeFileSync(path, `# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="seSparse"\nRW ${SECTORS} VMFSSPARSE "mixed-delta.vmdk"\n`);
    const err = await openError(path);
    expect(err.code).toBe('ERR_VMDK_FORMAT');
    expect(err.message).toMatch(/VMFSSPARSE extent in a seSparse disk/);
  });

  it('a read-only copy (mode 0444) of a chain still opens read-only', async () => {
    chmodSync(join(dir, 'snap1-delta.vmdk'), 0o444);
    const d = await openDisk(join(dir, 'snap2.vmdk'), { readOnly: true });
    await d.close();
    chmodSync(join(dir, 'snap1-delta.vmdk'), 0o644);
  });
});
