// Zeroing on sparse exports: WRITE_ZEROES and TRIM deallocate whole grains (hole, or the zeroed-grain
// entry when the extent has that flag), keep unit 0's grain of an encrypted disk allocated (the data
// check), write encrypted zeros into partial grains, and leave a disk that qemu-img checks clean and
// vmseal opens again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { openDisk, type NbdHost } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, random, run, startHost, unixUri } from './helpers.js';
import { CMD, FLAG, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
const GRAIN = 64 * KiB;

let tmp: ReturnType<typeof tempDir>;

beforeAll(() => {
  tmp = tempDir('vmseal-serve-zeroes-');
});

afterAll(() => {
  tmp?.cleanup();
});

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** qemu-img's view of the stored file (for an encrypted disk: where ciphertext is, not plaintext). */
async function qemuMap(path: string): Promise<MapEntry[]> {
  return JSON.parse(await run('qemu-img', ['map', '--output=json', '-f', 'vmdk', path])) as MapEntry[];
}

/** True when every byte of [start, end) is reported by qemu-img as reading zeros without data. */
function zeroWithoutData(map: MapEntry[], start: number, end: number): boolean {
  return map.filter((m) => m.start < end && m.start + m.length > start).every((m) => m.zero && !m.data);
}

function dataAt(map: MapEntry[], start: number, end: number): boolean {
  return map.filter((m) => m.start < end && m.start + m.length > start).every((m) => m.data);
}

/** Serve `path`, run `body` with a connected raw client, then stop the host (flush, unlock). */
async function withExport(path: string, name: string, body: (c: RawClient) => Promise<void>): Promise<void> {
  const dir = join(tmp.dir, `sock-${name}`);
  mkdirSync(dir, { recursive: true });
  let host: NbdHost | undefined;
  let c: RawClient | undefined;
  try {
    let socket: string;
    ({ host, socket } = await startHost(dir, [{ path, name }]));
    c = await RawClient.connect(socket);
    await c.go(name, { structured: true, meta: true });
    await body(c);
  } finally {
    c?.close();
    await host?.close();
  }
}

describe('WRITE_ZEROES and TRIM on an encrypted sparse export', () => {
  it('deallocates whole grains but unit 0s, writes encrypted zeros into partial grains, and the disk still opens', async () => {
    const content = random(4 * MiB);
    const path = await encryptedDisk(tmp.dir, 'enc', { subformat: 'monolithicSparse', capacity: 8 * MiB, unitSize: 4096, content });
    const expected = Buffer.concat([content, Buffer.alloc(4 * MiB)]);
    await withExport(path, 'enc', async (c) => {
      // [0, 3 MiB + 8 KiB): grains 0..47 whole, grain 48 partly.
      expect((await c.request(CMD.WRITE_ZEROES, 0, 3 * MiB + 8 * KiB)).error).toBe(0);
      expected.fill(0, 0, 3 * MiB + 8 * KiB);
      // FAST_ZERO of whole grains succeeds: deallocating is not writing.
      expect((await c.request(CMD.WRITE_ZEROES, 3 * MiB + 512 * KiB, 512 * KiB, FLAG.FAST_ZERO)).error).toBe(0);
      expected.fill(0, 3 * MiB + 512 * KiB, 4 * MiB);
      // TRIM deallocates whole grains too; the partial grain at its start keeps its data.
      expect((await c.request(CMD.TRIM, 3 * MiB + GRAIN - 4096, 4096 + 2 * GRAIN)).error).toBe(0);
      expected.fill(0, 3 * MiB + GRAIN, 3 * MiB + 3 * GRAIN);
      const back = await c.request(CMD.READ, 0, 8 * MiB);
      expect(back.error).toBe(0);
      expect(back.data.equals(expected)).toBe(true);
      // BLOCK_STATUS: unit 0's grain is data, then a hole up to the partial grain at 3 MiB.
      const bs = await c.request(CMD.BLOCK_STATUS, 0, 8 * MiB);
      expect(bs.extents.slice(0, 3)).toEqual([
        [GRAIN, 0],
        [3 * MiB - GRAIN, 3],
        [GRAIN, 0],
      ]);
    });
    expect(await run('qemu-img', ['check', '-f', 'vmdk', path])).toMatch(/No errors/);
    const map = await qemuMap(path);
    expect(dataAt(map, 0, GRAIN)).toBe(true); // unit 0's grain stays ciphertext (the data check)
    expect(zeroWithoutData(map, GRAIN, 3 * MiB)).toBe(true);
    expect(dataAt(map, 3 * MiB, 3 * MiB + GRAIN)).toBe(true); // partial grain: encrypted zeros written
    expect(zeroWithoutData(map, 3 * MiB + GRAIN, 3 * MiB + 3 * GRAIN)).toBe(true); // trimmed
    expect(zeroWithoutData(map, 3 * MiB + 512 * KiB, 8 * MiB)).toBe(true);
    // vmseal opens it (the data check matches unit 0 of zeros) and reads the same plaintext.
    const d = await openDisk(path, { keys: KEYS, readOnly: true });
    try {
      expect((await d.read(0, 8 * MiB)).equals(expected)).toBe(true);
    } finally {
      await d.close();
    }
  });

  it('with NO_HOLE writes encrypted zeros and keeps the grains allocated', async () => {
    const content = random(MiB);
    const path = await encryptedDisk(tmp.dir, 'nohole', { subformat: 'monolithicSparse', capacity: 2 * MiB, content });
    await withExport(path, 'nohole', async (c) => {
      expect((await c.request(CMD.WRITE_ZEROES, 0, MiB, FLAG.NO_HOLE)).error).toBe(0);
      expect((await c.request(CMD.READ, 0, MiB)).data.equals(Buffer.alloc(MiB))).toBe(true);
    });
    expect(dataAt(await qemuMap(path), 0, MiB)).toBe(true);
  });
});

describe('WRITE_ZEROES on a plain sparse export with the zeroed-grain flag (qemu-img zeroed_grain=on)', () => {
  it('marks whole grains zeroed (grain table entry 1), unit 0 included, and qemu reads them as zeros', async () => {
    const path = join(tmp.dir, 'zg.vmdk');
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse,zeroed_grain=on', path, '4M']);
    await run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 0 2M', path]);
    const before = statSync(path).size;
    await withExport(path, 'zg', async (c) => {
      expect((await c.request(CMD.WRITE_ZEROES, 0, MiB + 4096)).error).toBe(0);
      const back = await c.request(CMD.READ, 0, 2 * MiB);
      const expected = Buffer.alloc(2 * MiB, 0x5a);
      expected.fill(0, 0, MiB + 4096);
      expect(back.data.equals(expected)).toBe(true);
    });
    expect(await run('qemu-img', ['check', '-f', 'vmdk', path])).toMatch(/No errors/);
    const map = await qemuMap(path);
    expect(zeroWithoutData(map, 0, MiB)).toBe(true);
    expect(dataAt(map, MiB, 2 * MiB)).toBe(true);
    // qemu itself reads the zeroed grains as zeros and the rest as written.
    const io = await run('qemu-io', [
      '-f',
      'vmdk',
      '-r',
      '-c',
      'read -P 0 0 1M',
      '-c',
      'read -P 0 1M 4k',
      '-c',
      `read -P 0x5a ${MiB + 4096} ${MiB - 4096}`,
      path,
    ]);
    expect(io).not.toMatch(/fail/i);
    // Zeroing allocated nothing new: the file did not grow.
    expect(statSync(path).size).toBe(before);
  });
});

describe('qemu as the client', () => {
  it('write -z -u and discard over NBD deallocate grains of an encrypted sparse disk; nbdinfo --map shows holes', async () => {
    const content = random(4 * MiB);
    const path = await encryptedDisk(tmp.dir, 'qemu', { subformat: 'monolithicSparse', capacity: 4 * MiB, content });
    const dir = join(tmp.dir, 'sock-qemu');
    mkdirSync(dir, { recursive: true });
    const { host, socket } = await startHost(dir, [{ path, name: 'qemu' }]);
    try {
      const uri = unixUri(socket, 'qemu');
      // -u lets qemu send WRITE_ZEROES without NO_HOLE; discard is TRIM.
      const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -z -u 0 2M', '-c', 'discard 2M 1M', '-c', 'read -P 0 0 3M', uri]);
      expect(io).not.toMatch(/fail|error/i);
      const map = JSON.parse(await run('nbdinfo', ['--map', '--json', uri])) as Array<{ offset: number; length: number; type: number }>;
      const holeUpTo = map.find((m) => m.offset === GRAIN);
      expect(map[0]).toMatchObject({ offset: 0, length: GRAIN, type: 0 }); // unit 0's grain: data
      expect(holeUpTo).toMatchObject({ length: 3 * MiB - GRAIN, type: 3 }); // hole,zero
      const back = await run('qemu-io', ['-f', 'raw', '-r', '-c', `read -P 0 0 3M`, uri]);
      expect(back).not.toMatch(/fail/i);
    } finally {
      await host.close();
    }
    expect(await run('qemu-img', ['check', '-f', 'vmdk', path])).toMatch(/No errors/);
    const d = await openDisk(path, { keys: KEYS, readOnly: true });
    try {
      const all = await d.read(0, 4 * MiB);
      expect(all.subarray(0, 3 * MiB).equals(Buffer.alloc(3 * MiB))).toBe(true);
      expect(all.subarray(3 * MiB).equals(content.subarray(3 * MiB))).toBe(true);
    } finally {
      await d.close();
    }
  });
});
