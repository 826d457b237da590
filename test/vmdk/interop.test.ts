// Interoperability with the real tools: qemu-img / qemu-io (qemu-utils) and vmdkinfo (libvmdk-utils).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync, writeFileSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, openDisk, type CreateSubformat } from '../../src/vmdk/index.js';
import { MiB, patternData, qemuInfo, run, tempDir, tryRun, vmdkinfoSize } from './helpers.js';

let dir: string;
let cleanup: () => void;
beforeAll(() => ({ dir, cleanup } = tempDir()));
afterAll(() => cleanup());

async function readAll(path: string): Promise<Buffer> {
  const d = await openDisk(path, { readOnly: true });
  try {
    return await d.read(0, d.capacity);
  } finally {
    await d.close();
  }
}

function qemuRaw(path: string, name = 'qemu-out.raw'): Buffer {
  const out = join(dir, name);
  run('qemu-img', ['convert', '-O', 'raw', path, out]);
  return readFileSync(out);
}

/** Bytes outside the reported allocated ranges must be zero, and the ranges must be in order and disjoint. */
async function checkRanges(path: string, expected: Buffer): Promise<Array<{ offset: number; length: number }>> {
  const d = await openDisk(path, { readOnly: true });
  const ranges: Array<{ offset: number; length: number }> = [];
  for await (const r of d.allocatedRanges()) ranges.push(r);
  await d.close();
  let prev = 0;
  for (const r of ranges) {
    expect(r.offset).toBeGreaterThanOrEqual(prev);
    expect(r.length).toBeGreaterThan(0);
    if (r.offset > prev) expect(expected.subarray(prev, r.offset).every((b) => b === 0)).toBe(true);
    prev = r.offset + r.length;
  }
  expect(expected.subarray(prev).every((b) => b === 0)).toBe(true);
  return ranges;
}

const WRITTEN: Array<{ sub: CreateSubformat; opts?: object; name: string }> = [
  { sub: 'raw', name: 'raw' },
  { sub: 'monolithicSparse', name: 'monolithicSparse' },
  { sub: 'monolithicSparse', name: 'monolithicSparse lsilogic hw7 32K grains', opts: { adapterType: 'lsilogic', hwVersion: 7, grainSize: 32768 } },
  { sub: 'monolithicSparse', name: 'monolithicSparse 1 MiB grains', opts: { grainSize: MiB } },
  { sub: 'monolithicFlat', name: 'monolithicFlat' },
  { sub: 'twoGbMaxExtentSparse', name: 'twoGbMaxExtentSparse (3 extents)', opts: { maxExtentSize: 2 * MiB } },
  { sub: 'twoGbMaxExtentFlat', name: 'twoGbMaxExtentFlat (3 extents)', opts: { maxExtentSize: 2 * MiB } },
  { sub: 'streamOptimized', name: 'streamOptimized' },
  { sub: 'vmfs', name: 'vmfs', opts: { adapterType: 'buslogic' } },
];

describe('disks vmseal writes open in qemu-img and vmdkinfo with the same data', () => {
  WRITTEN.forEach(({ sub, opts, name }, n) => {
    it(name, async () => {
      const path = join(dir, `w${n}.${sub === 'raw' ? 'raw' : 'vmdk'}`);
      const capacity = 5 * MiB;
      const data = patternData(capacity, n + 1);
      const disk = await createDisk(path, { capacity, subformat: sub, ...opts });
      if (sub === 'streamOptimized') {
        // Front to back, in pieces that start and end inside grains.
        for (let at = 0; at < capacity;) {
          const len = Math.min(capacity - at, 100_003);
          await disk.write(at, data.subarray(at, at + len));
          at += len;
        }
      } else {
        // Out of order and at odd offsets: last part first, then the rest in uneven pieces, two at a time.
        await disk.write(4 * MiB + 777, data.subarray(4 * MiB + 777));
        const pieces: Array<Promise<void>> = [];
        for (let at = 0; at < 4 * MiB + 777;) {
          const len = Math.min(4 * MiB + 777 - at, 300_007);
          pieces.push(disk.write(at, data.subarray(at, at + len)));
          at += len;
          if (pieces.length === 2) await Promise.all(pieces.splice(0));
        }
        await Promise.all(pieces);
      }
      await disk.close();

      const info = qemuInfo(path);
      expect(info['virtual-size']).toBe(capacity);
      if (sub !== 'raw') {
        expect(info.format).toBe('vmdk');
        expect(info['format-specific']?.data?.['create-type']).toBe(sub);
        const check = tryRun('qemu-img', ['check', path]);
        expect(check.status, check.stdout + check.stderr).toBe(0);
        expect(vmdkinfoSize(path)).toBe(capacity);
      }
      expect(qemuRaw(path).equals(data)).toBe(true);
      expect((await readAll(path)).equals(data)).toBe(true);
      const ranges = await checkRanges(path, data);
      if (sub === 'streamOptimized') {
        // The zero MiB was never stored.
        expect(ranges.some((r) => r.offset <= MiB && r.offset + r.length >= 2 * MiB)).toBe(false);
      }
    });
  });
});

describe('disks qemu writes read byte-identically in vmseal', () => {
  const cases: Array<{ sub: string; o: string }> = [
    { sub: 'monolithicSparse', o: 'subformat=monolithicSparse' },
    { sub: 'monolithicSparse', o: 'subformat=monolithicSparse,adapter_type=lsilogic,hwversion=7,zeroed_grain=on' },
    { sub: 'monolithicFlat', o: 'subformat=monolithicFlat,adapter_type=buslogic' },
    { sub: 'twoGbMaxExtentSparse', o: 'subformat=twoGbMaxExtentSparse,zeroed_grain=on' },
    { sub: 'twoGbMaxExtentFlat', o: 'subformat=twoGbMaxExtentFlat,adapter_type=legacyESX' },
    { sub: 'streamOptimized', o: 'subformat=streamOptimized' },
  ];
  cases.forEach(({ sub, o }, n) => {
    it(`qemu-img create ${o} + qemu-io writes`, async () => {
      const path = join(dir, `q${n}.vmdk`);
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', o, path, '6M']);
      const cmds =
        sub === 'streamOptimized'
          ? ['write -P 0x11 0 65536', 'write -P 0x22 131072 1M', 'write -P 0x33 5M 65536']
          : [
              'write -P 0x11 1000 5000',
              'write -P 0x22 65535 3',
              'write -P 0x33 1M 1M',
              'write -z 1200k 200k',
              `write -P 0x44 ${5 * MiB + 511} 1000`,
              'write -P 0x55 6291455 1',
            ];
      run('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), path]);
      const expected = qemuRaw(path);
      expect(expected.length).toBe(6 * MiB);
      const disk = await openDisk(path, { readOnly: true });
      expect(disk.capacity).toBe(6 * MiB);
      expect(disk.subformat).toBe(sub);
      expect(disk.descriptor?.get('createType')).toBe(sub);
      await disk.close();
      expect((await readAll(path)).equals(expected)).toBe(true);
      await checkRanges(path, expected);
    });
  });

  it('a CRLF descriptor with comments and unknown keys: qemu and vmseal read the same data; a bare qemu extent opens alone', async () => {
    const path = join(dir, 'crlf.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', path, '3M']);
    run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x21 70001 9999', path]);
    const text = readFileSync(path, 'utf8').replace(/\0+$/, '');
    const edited = text
      .replace('createType="twoGbMaxExtentSparse"', 'createType="twoGbMaxExtentSparse"\nencryption.note = "kept"\n# a section comment')
      .split('\n')
      .join('\r\n');
    writeFileSync(path, edited);
    const expected = qemuRaw(path);
    const disk = await openDisk(path, { allowEncrypted: true, readOnly: true });
    expect(disk.descriptor!.crlf).toBe(true);
    expect(disk.descriptor!.toString()).toBe(edited);
    expect((await disk.read(0, disk.capacity)).equals(expected)).toBe(true);
    await disk.close();
    // qemu leaves an empty descriptor area in split extents: the extent opens as a disk of its own.
    const part = await openDisk(path.replace('.vmdk', '-s001.vmdk'), { readOnly: true });
    expect((await part.read(0, part.capacity)).equals(expected)).toBe(true);
    await part.close();
  });

  it('a text descriptor qemu rewrote with a shorter CID (stale text after the NUL) opens; binary after the NUL does not', async () => {
    // qemu rewrites the CID in place ("%x", no leading zeros) and stops at the new text's NUL: a CID two
    // digits shorter than the old one leaves the old text's last byte behind. qemu's CID is random, so
    // real runs hit this now and then ('wrong magic' on a 512-byte file); here it is made on purpose.
    const path = join(dir, 'stale.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentFlat', path, '2M']);
    run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x3c 4096 5000', path]);
    const file = readFileSync(path);
    const old = file.subarray(0, file.indexOf(0) < 0 ? file.length : file.indexOf(0)).toString('latin1');
    const cid = /^CID=([0-9a-f]+)$/m.exec(old)![1];
    const shorter = old.replace(`CID=${cid}`, `CID=${'1'.repeat(Math.max(1, cid.length - 2))}`);
    expect(shorter.length).toBeLessThan(old.length - 1);
    const stale = Buffer.alloc(Math.max(file.length, 512));
    stale.write(old, 0, 'latin1');
    stale.write(shorter, 0, 'latin1');
    stale[shorter.length] = 0;
    expect(stale.subarray(shorter.length + 1, old.length).some((b) => b !== 0)).toBe(true);
    writeFileSync(path, stale);
    const expected = qemuRaw(path);
    expect(expected.subarray(4096, 9096).every((b) => b === 0x3c)).toBe(true);
    expect((await readAll(path)).equals(expected)).toBe(true);
    // Binary data after the NUL is not a descriptor.
    const binary = Buffer.from(stale);
    binary[shorter.length + 3] = 0x01;
    writeFileSync(path, binary);
    await expect(openDisk(path, { readOnly: true })).rejects.toMatchObject({ code: 'ERR_VMDK_FORMAT' });
  });

  it('qemu-img convert from raw into every subformat', async () => {
    const src = join(dir, 'conv-src.raw');
    const data = patternData(3 * MiB + 512 * 7, 99);
    writeFileSync(src, data);
    for (const sub of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized']) {
      const path = join(dir, `conv-${sub}.vmdk`);
      run('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, src, path]);
      const back = await readAll(path);
      expect(back.length).toBe(data.length);
      expect(back.equals(data), sub).toBe(true);
    }
  });

  it('a 4.5 GiB twoGbMaxExtent disk from qemu: writes across the 2 GiB extent boundaries', async () => {
    for (const sub of ['twoGbMaxExtentFlat', 'twoGbMaxExtentSparse']) {
      const path = join(dir, `big-${sub}.vmdk`);
      run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${sub}`, path, '4608M']);
      const spots = [2 * 1024 * MiB - 1000, 4 * 1024 * MiB - 3, 4608 * MiB - 4096];
      run('qemu-io', ['-f', 'vmdk', ...spots.flatMap((s, i) => ['-c', `write -P ${0x61 + i} ${s} 4096`]), path]);
      const disk = await openDisk(path, { readOnly: true });
      expect(disk.capacity).toBe(4608 * MiB);
      expect(disk.files().length).toBe(4);
      for (const [i, s] of spots.entries()) {
        const got = await disk.read(s - 100, 4196);
        expect(got.subarray(0, 100).every((b) => b === 0)).toBe(true);
        expect(got.subarray(100).every((b) => b === 0x61 + i)).toBe(true);
      }
      if (sub === 'twoGbMaxExtentSparse') {
        const ranges: Array<{ offset: number; length: number }> = [];
        for await (const r of disk.allocatedRanges()) ranges.push(r);
        // Each write touches one or two 64 KiB grains.
        expect(ranges.length).toBe(3);
        for (const [i, s] of spots.entries()) {
          expect(ranges[i].offset).toBeLessThanOrEqual(s);
          expect(ranges[i].offset + ranges[i].length).toBeGreaterThanOrEqual(Math.min(s + 4096, 4608 * MiB));
          expect(ranges[i].length).toBeLessThanOrEqual(2 * 65536);
        }
      }
      await disk.close();
    }
  });
});

describe('both tools modifying the same disk', () => {
  for (const sub of ['monolithicSparse', 'twoGbMaxExtentSparse', 'monolithicFlat'] as const) {
    it(`${sub}: vmseal writes, qemu-io modifies, vmseal reads and modifies, qemu reads`, async () => {
      const path = join(dir, `mix-${sub}.vmdk`);
      const capacity = 4 * MiB;
      const expected = Buffer.alloc(capacity);
      const disk = await createDisk(path, { capacity, subformat: sub, maxExtentSize: MiB });
      const first = patternData(MiB + 333, 7);
      await disk.write(70_000, first);
      first.copy(expected, 70_000);
      await disk.close();

      run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 65000 10000', '-c', `write -P 0x6b ${2 * MiB + 1} 70000`, '-c', 'write -z 500000 65536', path]);
      expected.fill(0x5a, 65000, 75000);
      expected.fill(0x6b, 2 * MiB + 1, 2 * MiB + 1 + 70000);
      expected.fill(0, 500000, 500000 + 65536);
      expect(qemuRaw(path).equals(expected)).toBe(true);
      expect((await readAll(path)).equals(expected)).toBe(true);

      const again = await openDisk(path);
      const more = patternData(200_000, 8);
      await again.write(3 * MiB + 17, more);
      more.copy(expected, 3 * MiB + 17);
      await again.write(2 * MiB + 50, Buffer.alloc(10, 0xee));
      expected.fill(0xee, 2 * MiB + 50, 2 * MiB + 60);
      await again.close();

      const check = tryRun('qemu-img', ['check', path]);
      expect(check.status, check.stdout + check.stderr).toBe(0);
      expect(qemuRaw(path).equals(expected)).toBe(true);
      expect(vmdkinfoSize(path)).toBe(capacity);
      // And qemu-io once more on the disk vmseal extended.
      run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x7c 3M 4096', path]);
      expected.fill(0x7c, 3 * MiB, 3 * MiB + 4096);
      expect((await readAll(path)).equals(expected)).toBe(true);
    });
  }

  it('a streamOptimized disk vmseal wrote is read by vmdkinfo-compatible readers and converted by qemu', async () => {
    const path = join(dir, 'so.vmdk');
    const capacity = 3 * MiB;
    const data = patternData(capacity, 5);
    const disk = await createDisk(path, { capacity, subformat: 'streamOptimized' });
    await disk.write(0, data);
    await disk.close();
    const out = join(dir, 'so-to-sparse.vmdk');
    run('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', path, out]);
    expect((await readAll(out)).equals(data)).toBe(true);
    // Raw bytes of the tail: footer marker, footer (KDMV), end-of-stream marker.
    const fd = openSync(path, 'r');
    const size = readFileSync(path).length;
    const tail = Buffer.alloc(1536);
    readSync(fd, tail, 0, 1536, size - 1536);
    closeSync(fd);
    expect(tail.readUInt32LE(12)).toBe(3);
    expect(tail.subarray(512, 516).toString('latin1')).toBe('KDMV');
    expect(tail.subarray(1024).every((b) => b === 0)).toBe(true);
  });
});
