// The VirtualDisk API: properties, reads/writes, allocation map, descriptor updates, encryption hook.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdirSync, readFileSync, writeFileSync, openSync, writeSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, openDisk, VmdkFormatError, type VirtualDisk } from '../../src/vmdk/index.js';
import { GT_CACHE_BYTES, gtCacheSettings } from '../../src/vmdk/sparse-extent.js';
import { MiB, patternData, qemuInfo, run, tempDir, tryRun, vmdkinfoSize } from './helpers.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => ({ dir, cleanup } = tempDir()));
afterAll(() => cleanup());
let n = 0;
const fresh = (ext = 'vmdk') => join(dir, `d${++n}.${ext}`);

async function rejects(p: Promise<unknown> | (() => unknown), code: string): Promise<VmdkFormatError> {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(VmdkFormatError);
  expect((err as VmdkFormatError).code, (err as Error).message).toBe(code);
  return err as VmdkFormatError;
}

async function ranges(d: VirtualDisk, start?: number, end?: number) {
  const out: Array<{ offset: number; length: number }> = [];
  for await (const r of d.allocatedRanges(start, end)) out.push(r);
  return out;
}

/** Small deterministic PRNG for the random-write model test. */
function rng(seed: number) {
  let x = seed;
  return (max: number) => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x % max;
  };
}

describe('createDisk / openDisk basics', () => {
  it('exposes path, capacity, format, subformat, descriptor, readOnly, grainSize, files()', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: 3 * MiB, subformat: 'twoGbMaxExtentSparse', maxExtentSize: MiB, grainSize: 32768 });
    expect(d.path).toBe(p);
    expect(d.capacity).toBe(3 * MiB);
    expect(d.format).toBe('vmdk');
    expect(d.subformat).toBe('twoGbMaxExtentSparse');
    expect(d.readOnly).toBe(false);
    expect(d.grainSize).toBe(32768);
    expect(d.descriptor?.extents.length).toBe(3);
    expect(d.files()).toEqual([p, p.replace('.vmdk', '-s001.vmdk'), p.replace('.vmdk', '-s002.vmdk'), p.replace('.vmdk', '-s003.vmdk')]);
    await d.close();
    const flat = await createDisk(fresh(), { capacity: MiB, subformat: 'monolithicFlat' });
    expect(flat.grainSize).toBeUndefined();
    expect(flat.files().length).toBe(2);
    expect(await ranges(flat)).toEqual([{ offset: 0, length: MiB }]);
    await flat.close();
    const raw = await createDisk(fresh('img'), { capacity: MiB, subformat: 'raw' });
    expect([raw.format, raw.subformat, raw.descriptor, raw.grainSize]).toEqual(['raw', 'raw', undefined, undefined]);
    await raw.close();
  });

  it('validates createDisk arguments and refuses to overwrite', async () => {
    const p = fresh();
    await rejects(createDisk(p, { capacity: 1000 }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: 0 }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, subformat: 'vmfsSparse' as never }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, grainSize: 3000 }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, adapterType: 'scsi' as never }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, hwVersion: 'x' }), 'ERR_INVALID_ARGUMENT');
    // 64 TiB: a grain directory beyond MAX_GD_ENTRIES (4 TiB is accepted: the 2 TiB limit is on the file, not the capacity).
    await rejects(createDisk(p, { capacity: 2 ** 46, subformat: 'monolithicSparse' }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, descriptorLines: [['CID', '1']] }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, descriptorLines: [['k', 'a"b']] }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, uuid: '01 02 03"\nCID=1' }), 'ERR_INVALID_ARGUMENT');
    await rejects(createDisk(p, { capacity: MiB, uuid: '01 02 03' }), 'ERR_INVALID_ARGUMENT');
    // The internal file-system hint of a job's staging folder (a boolean or nothing).
    await rejects(createDisk(p, { capacity: MiB, memoryBacked: 'yes' as never }), 'ERR_INVALID_ARGUMENT');
    await (await createDisk(p, { capacity: MiB })).close();
    await rejects(createDisk(p, { capacity: MiB }), 'ERR_VMDK_EXISTS');
    await (await createDisk(p, { capacity: 2 * MiB, overwrite: true })).close();
    expect(qemuInfo(p)['virtual-size']).toBe(2 * MiB);
  });

  it('detects raw images by extension without looking inside, and by content otherwise', async () => {
    const vmdk = fresh();
    await (await createDisk(vmdk, { capacity: MiB })).close();
    const asRaw = join(dir, 'looks-like-vmdk.img');
    writeFileSync(asRaw, readFileSync(vmdk));
    const r = await openDisk(asRaw);
    expect(r.format).toBe('raw');
    expect(r.capacity).toBe(readFileSync(vmdk).length);
    await r.close();
    const noExt = join(dir, 'noext');
    writeFileSync(noExt, readFileSync(vmdk));
    const v = await openDisk(noExt, { readOnly: true });
    expect(v.format).toBe('vmdk');
    await v.close();
    const forced = await openDisk(noExt, { format: 'raw', readOnly: true });
    expect(forced.format).toBe('raw');
    await forced.close();
    const bin = join(dir, 'data.bin');
    writeFileSync(bin, Buffer.alloc(4096, 7));
    const b = await openDisk(bin, { readOnly: true });
    expect([b.format, b.capacity]).toEqual(['raw', 4096]);
    await b.close();
    await rejects(openDisk(join(dir, 'absent.vmdk')), 'ERR_VMDK_EXTENT_FILE');
    await rejects(openDisk(''), 'ERR_INVALID_ARGUMENT');
    await rejects(openDisk(vmdk, { readOnly: 'yes' as never }), 'ERR_INVALID_ARGUMENT');
  });
});

describe('reads and writes', () => {
  it('refuses writes when read-only, out-of-range and bad arguments, and after close', async () => {
    const p = fresh();
    await (await createDisk(p, { capacity: MiB })).close();
    const d = await openDisk(p, { readOnly: true });
    expect(d.readOnly).toBe(true);
    await rejects(d.write(0, Buffer.alloc(512)), 'ERR_VMDK_READ_ONLY');
    await rejects(
      d.updateDescriptor(() => {}),
      'ERR_VMDK_READ_ONLY',
    );
    await rejects(d.read(MiB - 10, 11), 'ERR_VMDK_RANGE');
    await rejects(d.read(-1, 1), 'ERR_INVALID_ARGUMENT');
    await rejects(d.read(1.5, 1), 'ERR_INVALID_ARGUMENT');
    await rejects(d.read(0, 2 ** 30), 'ERR_INVALID_ARGUMENT');
    await rejects(d.readInto(0, 'x' as never), 'ERR_INVALID_ARGUMENT');
    await rejects(ranges(d, 0, MiB + 1), 'ERR_VMDK_RANGE');
    expect((await d.read(MiB, 0)).length).toBe(0);
    await d.close();
    await rejects(d.read(0, 1), 'ERR_VMDK_CLOSED');
    await d.close();
  });

  for (const sub of ['monolithicSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'raw'] as const) {
    it(`${sub}: random concurrent writes and reads match a model, and qemu agrees`, async () => {
      const p = fresh(sub === 'raw' ? 'raw' : 'vmdk');
      const capacity = 4 * MiB;
      const model = Buffer.alloc(capacity);
      const d = await createDisk(p, { capacity, subformat: sub, maxExtentSize: MiB + 65536 * 3, grainSize: 16384 });
      const rand = rng(42);
      for (let round = 0; round < 12; round++) {
        const ops: Array<Promise<unknown>> = [];
        const used: Array<[number, number]> = [];
        for (let k = 0; k < 6; k++) {
          const len = 1 + rand(200_000);
          const at = rand(capacity - len);
          // Concurrent writes must not overlap each other (their order would be undefined).
          if (used.some(([a, b]) => at < b && a < at + len)) continue;
          used.push([at, at + len]);
          const data = patternData(len, round * 10 + k + 1);
          data.copy(model, at);
          ops.push(d.write(at, data));
        }
        // Reads in flight with the writes, of ranges no write touches.
        const rAt = rand(capacity - 70000);
        if (!used.some(([a, b]) => rAt < b && a < rAt + 70000)) {
          const expected = Buffer.from(model.subarray(rAt, rAt + 70000));
          ops.push(d.read(rAt, 70000).then((got) => expect(got.equals(expected)).toBe(true)));
        }
        await Promise.all(ops);
      }
      expect((await d.read(0, capacity)).equals(model)).toBe(true);
      const target = new Uint8Array(12345);
      await d.readInto(777, target);
      expect(Buffer.from(target).equals(model.subarray(777, 777 + 12345))).toBe(true);
      await d.flush();
      await d.close();
      if (sub !== 'raw') expect(tryRun('qemu-img', ['check', p]).status).toBe(0);
      run('qemu-img', ['convert', '-O', 'raw', p, join(dir, 'model.raw')]);
      expect(readFileSync(join(dir, 'model.raw')).equals(model)).toBe(true);
    });
  }

  it('grain tables evicted from a small cache are re-read correctly, under concurrent reads and writes', async () => {
    gtCacheSettings.bytes = 4 * 2048; // 4 tables of 512 entries
    try {
      const p = fresh();
      const capacity = 40 * MiB; // 4 KiB grains: 20 tables of 2 MiB each
      const model = Buffer.alloc(capacity);
      const d = await createDisk(p, { capacity, subformat: 'monolithicSparse', grainSize: 4096 });
      const rand = rng(7);
      for (let round = 0; round < 30; round++) {
        const ops: Array<Promise<unknown>> = [];
        const used: Array<[number, number]> = [];
        for (let k = 0; k < 5; k++) {
          const len = 1 + rand(20_000);
          const at = rand(capacity - len);
          if (used.some(([a, b]) => at < b && a < at + len)) continue;
          used.push([at, at + len]);
          const data = patternData(len, round * 7 + k + 1);
          data.copy(model, at);
          ops.push(d.write(at, data));
        }
        for (let k = 0; k < 3; k++) {
          const at = rand(capacity - 9000);
          if (used.some(([a, b]) => at < b && a < at + 9000)) continue;
          const expected = Buffer.from(model.subarray(at, at + 9000));
          ops.push(d.read(at, 9000).then((got) => expect(got.equals(expected)).toBe(true)));
        }
        await Promise.all(ops);
      }
      expect((await d.read(0, capacity)).equals(model)).toBe(true);
      await d.close();
      const back = await openDisk(p, { readOnly: true });
      expect((await back.read(0, capacity)).equals(model)).toBe(true);
      await back.close();
      expect(tryRun('qemu-img', ['check', p]).status).toBe(0);
      run('qemu-img', ['convert', '-O', 'raw', p, join(dir, 'evict.raw')]);
      expect(readFileSync(join(dir, 'evict.raw')).equals(model)).toBe(true);
    } finally {
      gtCacheSettings.bytes = GT_CACHE_BYTES;
    }
  });

  it('close() waits for reads and writes still in flight', async () => {
    for (const sub of ['monolithicFlat', 'monolithicSparse'] as const) {
      const p = fresh();
      const d = await createDisk(p, { capacity: 4 * MiB, subformat: sub });
      const data = patternData(4 * MiB, 31);
      const writes = [0, 1, 2, 3].map((k) => d.write(k * MiB, data.subarray(k * MiB, (k + 1) * MiB)));
      await d.close();
      await Promise.all(writes);
      const r = await openDisk(p, { readOnly: true });
      expect((await r.read(0, 4 * MiB)).equals(data)).toBe(true);
      await r.close();
    }
  });

  it('a partial-grain write to an unallocated grain zero-fills the rest of the grain; allocatedRanges is exact and coalesced', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: 8 * MiB, subformat: 'monolithicSparse' });
    await d.write(65536 * 3 + 100, Buffer.alloc(10, 0xab));
    await d.write(65536 * 4, Buffer.alloc(65536 * 2, 0xcd));
    await d.write(7 * MiB + 5, Buffer.alloc(1, 1));
    const g = await d.read(65536 * 3, 65536);
    expect(g.subarray(0, 100).every((b) => b === 0)).toBe(true);
    expect(g.subarray(100, 110).every((b) => b === 0xab)).toBe(true);
    expect(g.subarray(110).every((b) => b === 0)).toBe(true);
    expect(await ranges(d)).toEqual([
      { offset: 65536 * 3, length: 65536 * 3 },
      { offset: 7 * MiB, length: 65536 },
    ]);
    expect(await ranges(d, 65536 * 3 + 5, 65536 * 4 + 7)).toEqual([{ offset: 65536 * 3 + 5, length: 65536 + 2 }]);
    expect(await ranges(d, 0, 65536 * 3)).toEqual([]);
    await d.close();
  });

  it('a 64 GiB sparse disk with a little data: the map, the host size and a copy follow the data, not the capacity', async () => {
    const p = fresh();
    const capacity = 64 * 1024 * MiB;
    const d = await createDisk(p, { capacity, subformat: 'monolithicSparse' });
    const data = patternData(3 * MiB, 11);
    await d.write(40 * 1024 * MiB + 123, data);
    await d.write(5 * MiB, data.subarray(0, 1000));
    await d.close();
    const src = await openDisk(p, { readOnly: true });
    const map = await ranges(src);
    expect(map.length).toBe(2);
    const out = await createDisk(fresh(), { capacity, subformat: 'monolithicSparse' });
    let copied = 0;
    for (const r of map) {
      const buf = await src.read(r.offset, r.length);
      await out.write(r.offset, buf);
      copied += r.length;
    }
    expect(copied).toBeLessThan(4 * MiB);
    expect(await out.allocatedBytes()).toBeLessThan(16 * MiB);
    expect((await out.read(40 * 1024 * MiB + 123, data.length)).equals(data)).toBe(true);
    expect(await ranges(out)).toEqual(map);
    await out.close();
    await src.close();
    expect(qemuInfo(p)['virtual-size']).toBe(capacity);
  });

  it('allocates a grain table when its directory entry is 0, keeping GD and RGD in step', async () => {
    const p = fresh();
    await (await createDisk(p, { capacity: 96 * MiB, subformat: 'monolithicSparse' })).close();
    // Clear GD[1] and RGD[1] (the second 32 MiB): as if the table had never been allocated.
    const buf = readFileSync(p);
    const gd = Number(buf.readBigUInt64LE(56));
    const rgd = Number(buf.readBigUInt64LE(48));
    const fd = openSync(p, 'r+');
    writeSync(fd, Buffer.alloc(4), 0, 4, gd * 512 + 4);
    writeSync(fd, Buffer.alloc(4), 0, 4, rgd * 512 + 4);
    closeSync(fd);
    const d = await openDisk(p);
    expect(await ranges(d)).toEqual([]);
    const data = patternData(100_000, 12);
    await d.write(40 * MiB + 1, data);
    await d.close();
    const after = readFileSync(p);
    expect(after.readUInt32LE(gd * 512 + 4)).not.toBe(0);
    expect(after.readUInt32LE(rgd * 512 + 4)).not.toBe(0);
    expect(tryRun('qemu-img', ['check', p]).status).toBe(0);
    const expected = Buffer.alloc(96 * MiB);
    data.copy(expected, 40 * MiB + 1);
    run('qemu-img', ['convert', '-O', 'raw', p, join(dir, 'gt.raw')]);
    expect(readFileSync(join(dir, 'gt.raw')).equals(expected)).toBe(true);
  });

  it('streamOptimized: written front to back only; not readable until reopened', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: 2 * MiB, subformat: 'streamOptimized' });
    await d.write(100_000, Buffer.alloc(5000, 1));
    await rejects(d.write(0, Buffer.alloc(10)), 'ERR_VMDK_WRITE_ORDER');
    await d.write(100_000 + 5000 - 10, Buffer.alloc(20, 2)); // inside the grain being filled: fine
    await rejects(d.read(0, 10), 'ERR_VMDK_UNSUPPORTED');
    await d.write(MiB, Buffer.alloc(65536, 3));
    await rejects(d.write(MiB + 65535, Buffer.alloc(1)), 'ERR_VMDK_WRITE_ORDER');
    await d.close();
    const r = await openDisk(p);
    const all = await r.read(0, 2 * MiB);
    const expected = Buffer.alloc(2 * MiB);
    expected.fill(1, 100_000, 105_000);
    expected.fill(2, 104_990, 105_010);
    expected.fill(3, MiB, MiB + 65536);
    expect(all.equals(expected)).toBe(true);
    expect(await ranges(r)).toEqual([
      { offset: 65536, length: 65536 },
      { offset: MiB, length: 65536 },
    ]);
    expect(r.grainSize).toBe(65536);
    await r.close();
    expect(vmdkinfoSize(p)).toBe(2 * MiB);
  });

  it('a bare sparse extent file opens on its own with a descriptor made in memory', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: 2 * MiB, subformat: 'twoGbMaxExtentSparse', maxExtentSize: MiB });
    await d.write(MiB + 10, Buffer.alloc(10, 9));
    await d.close();
    const part = await openDisk(p.replace('.vmdk', '-s002.vmdk'));
    expect(part.capacity).toBe(MiB);
    expect((await part.read(10, 10)).every((b) => b === 9)).toBe(true);
    await rejects(
      part.updateDescriptor(() => {}),
      'ERR_VMDK_DESCRIPTOR_FULL',
    );
    await part.close();
  });
});

describe('descriptor updates and the encryption hook', () => {
  it('text descriptor: replaced atomically, other lines untouched, qemu still reads it', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: MiB, subformat: 'monolithicFlat' });
    await d.write(0, Buffer.alloc(512, 5));
    const before = readFileSync(p, 'utf8');
    await d.updateDescriptor((desc) => {
      desc.set('ddb.encryption.test', 'abc');
      desc.set('ddb.adapterType', 'lsilogic');
    });
    const after = readFileSync(p, 'utf8');
    expect(after).toBe(
      before
        .replace('"ide"', '"lsilogic"')
        .replace('ddb.uuid', 'ddb.uuid')
        .replace(/(ddb\.uuid = "[^"]*"\n)/, '$1ddb.encryption.test = "abc"\n'),
    );
    expect(d.descriptor?.get('ddb.encryption.test')).toBe('abc');
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    await rejects(
      d.updateDescriptor((x) => void x.set('createType', 'vmfs')),
      'ERR_INVALID_ARGUMENT',
    );
    await d.close();
    expect(qemuInfo(p)['virtual-size']).toBe(MiB);
  });

  it('embedded descriptor: rewritten in place; ERR_VMDK_DESCRIPTOR_FULL when it no longer fits', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: 2 * MiB, subformat: 'monolithicSparse' });
    const data = patternData(2 * MiB, 13);
    await d.write(0, data);
    await d.updateDescriptor((desc) => desc.set('encryption.data', 'x'.repeat(4096)));
    await rejects(
      d.updateDescriptor((desc) => desc.set('encryption.more', 'y'.repeat(9000))),
      'ERR_VMDK_DESCRIPTOR_FULL',
    );
    expect(d.descriptor?.get('encryption.more')).toBeUndefined();
    await d.close();
    await rejects(openDisk(p), 'ERR_DISK_ENCRYPTED');
    const back = await openDisk(p, { allowEncrypted: true });
    expect(back.descriptor?.get('encryption.data')).toBe('x'.repeat(4096));
    expect((await back.read(0, 2 * MiB)).equals(data)).toBe(true);
    await back.close();
    expect(tryRun('qemu-img', ['check', p]).status).toBe(0);
    run('qemu-img', ['convert', '-O', 'raw', p, join(dir, 'emb.raw')]);
    expect(readFileSync(join(dir, 'emb.raw')).equals(data)).toBe(true);
  });

  it('options.uuid is the ddb.uuid qemu reads back', async () => {
    const p = fresh();
    const uuid = '60 00 c2 9a 0b 1c 2d 3e-4f 50 61 72 83 94 a5 b6';
    await (await createDisk(p, { capacity: MiB, subformat: 'monolithicFlat', uuid })).close();
    expect(readFileSync(p, 'latin1')).toContain(`ddb.uuid = "${uuid}"`);
    expect(qemuInfo(p)['virtual-size']).toBe(MiB);
  });

  it('descriptorLines land right after createType, survive qemu, and make openDisk refuse without allowEncrypted', async () => {
    for (const sub of ['monolithicSparse', 'monolithicFlat', 'streamOptimized'] as const) {
      const p = fresh();
      const lines: Array<[string, string]> = [
        ['encryption.keySafe', 'vmware:key/list/(pair/(null/,AES-256,abc%2fdef))'],
        ['encryption.data', 'unit=512'],
        ['ddb.encryption.version', '1'],
      ];
      const d = await createDisk(p, { capacity: MiB, subformat: sub, descriptorLines: lines });
      await d.write(0, Buffer.alloc(MiB, 0x42));
      await d.close();
      const e = await rejects(openDisk(p), 'ERR_DISK_ENCRYPTED');
      expect(e.message).toContain('is encrypted; open it with keys');
      const open = await openDisk(p, { allowEncrypted: true, readOnly: true });
      const text = open.descriptor!.toString().split('\n');
      const ct = text.findIndex((l) => l.startsWith('createType'));
      expect(text.slice(ct + 1, ct + 3)).toEqual(['encryption.keySafe = "vmware:key/list/(pair/(null/,AES-256,abc%2fdef))"', 'encryption.data = "unit=512"']);
      expect(open.descriptor!.get('ddb.encryption.version')).toBe('1');
      await open.close();
      expect(qemuInfo(p)['virtual-size']).toBe(MiB);
      run('qemu-img', ['convert', '-O', 'raw', p, join(dir, 'enc.raw')]);
      expect(readFileSync(join(dir, 'enc.raw')).every((b) => b === 0x42)).toBe(true);
      if (sub !== 'streamOptimized') {
        // qemu rewrites the descriptor on its first write; the lines survive it.
        run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 1 0 512', p]);
        const again = await openDisk(p, { allowEncrypted: true, readOnly: true });
        expect(again.descriptor!.get('encryption.keySafe')).toBe(lines[0][1]);
        expect(again.descriptor!.get('ddb.encryption.version')).toBe('1');
        await again.close();
      }
    }
  });

  it('a streamOptimized disk being created can have its descriptor updated before and after its data', async () => {
    const p = fresh();
    const d = await createDisk(p, { capacity: MiB, subformat: 'streamOptimized', descriptorLines: [['encryption.a', '1']] });
    await d.updateDescriptor((x) => x.set('encryption.b', '2'));
    const data = patternData(MiB, 21);
    await d.write(0, data);
    await d.updateDescriptor((x) => x.set('encryption.a', '3'));
    await d.close();
    const r = await openDisk(p, { allowEncrypted: true, readOnly: true });
    expect(r.descriptor!.entries().filter(([k]) => k.startsWith('encryption.'))).toEqual([
      ['encryption.a', '3'],
      ['encryption.b', '2'],
    ]);
    expect((await r.read(0, MiB)).equals(data)).toBe(true);
    await r.close();
    run('qemu-img', ['convert', '-O', 'raw', p, join(dir, 'so-upd.raw')]);
    expect(readFileSync(join(dir, 'so-upd.raw')).equals(data)).toBe(true);
  });

  it('raw images have no descriptor to update; allocatedBytes counts host blocks', async () => {
    const p = fresh('raw');
    const d = await createDisk(p, { capacity: 4 * MiB, subformat: 'raw' });
    await rejects(
      d.updateDescriptor(() => {}),
      'ERR_VMDK_DESCRIPTOR_FULL',
    );
    expect(await d.allocatedBytes()).toBeLessThan(MiB);
    await d.write(0, Buffer.alloc(MiB, 1));
    expect(await d.allocatedBytes()).toBeGreaterThanOrEqual(MiB);
    await d.close();
  });
});
