// The NBD server against real clients: libnbd's nbdinfo and nbdcopy, qemu-img and qemu-io. What
// they write is checked afterwards by opening the disk with vmseal itself (decrypting it).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, plainRaw, plaintextOf, random, run, startHost, unixUri } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;

beforeAll(() => {
  tmp = tempDir('vmseal-serve-interop-');
});
afterAll(() => tmp?.cleanup());

describe('nbdinfo', () => {
  it('--json reports size, block sizes and capabilities; --map reports the holes of a sparse encrypted disk', async () => {
    const dir = join(tmp.dir, 'info');
    await run('mkdir', ['-p', dir]);
    const flat = await encryptedDisk(dir, 'flat', { subformat: 'monolithicFlat', capacity: 2 * MiB, unitSize: 4096 });
    const sparse = await encryptedDisk(dir, 'sparse', { subformat: 'monolithicSparse', capacity: 16 * MiB, content: random(128 * 1024), at: 4 * MiB });
    const { host, socket } = await startHost(dir, [{ path: flat }, { path: sparse, shared: 4 }]);
    try {
      const info = JSON.parse(await run('nbdinfo', ['--json', unixUri(socket, 'flat')]));
      expect(info.protocol).toBe('newstyle-fixed');
      expect(info.structured).toBe(true);
      expect(info.exports[0]).toMatchObject({
        'export-name': 'flat',
        'export-size': 2 * MiB,
        is_read_only: false,
        can_flush: true,
        can_fua: true,
        can_zero: true,
        can_trim: true,
        can_fast_zero: true,
        can_multi_conn: false,
        block_size_minimum: 4096,
        block_size_preferred: 4096,
        block_size_maximum: 32 * MiB,
      });
      expect(info.exports[0].contexts).toContain('base:allocation');
      const sp = JSON.parse(await run('nbdinfo', ['--json', unixUri(socket, 'sparse')]));
      expect(sp.exports[0]).toMatchObject({ 'export-size': 16 * MiB, can_multi_conn: true, block_size_minimum: 512 });

      const map = JSON.parse(await run('nbdinfo', ['--map', '--json', unixUri(socket, 'sparse')])) as Array<{ offset: number; length: number; type: number }>;
      expect(map.reduce((s, e) => s + e.length, 0)).toBe(16 * MiB);
      const data = map.filter((e) => e.type === 0);
      // The written range is data; most of the disk is a hole that reads as zeros (type 3).
      expect(data.some((e) => e.offset <= 4 * MiB && e.offset + e.length >= 4 * MiB + 128 * 1024)).toBe(true);
      expect(data.reduce((s, e) => s + e.length, 0)).toBeLessThan(2 * MiB);
      expect(map.filter((e) => e.type === 3).reduce((s, e) => s + e.length, 0)).toBeGreaterThan(14 * MiB);
    } finally {
      await host.close();
    }
  });
});

describe('qemu-img and qemu-io', () => {
  it('convert from the export equals the plaintext; compare says identical', async () => {
    const dir = join(tmp.dir, 'convert');
    await run('mkdir', ['-p', dir]);
    const content = random(8 * MiB);
    const plain = plainRaw(dir, 'plain', content);
    const flat = await encryptedDisk(dir, 'flat', { subformat: 'monolithicFlat', capacity: 8 * MiB, content });
    const sparse = await encryptedDisk(dir, 'sparse', { subformat: 'monolithicSparse', capacity: 8 * MiB, content: content.subarray(0, 3 * MiB) });
    const { host, socket } = await startHost(dir, [
      { path: flat, readOnly: true },
      { path: sparse, readOnly: true },
    ]);
    try {
      const out = join(dir, 'out.raw');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', unixUri(socket, 'flat'), out]);
      expect(readFileSync(out).equals(content)).toBe(true);
      expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', unixUri(socket, 'flat'), plain])).toMatch(/identical/);
      const outSparse = join(dir, 'out-sparse.raw');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', unixUri(socket, 'sparse'), outSparse]);
      const expected = Buffer.alloc(8 * MiB);
      content.copy(expected, 0, 0, 3 * MiB);
      expect(readFileSync(outSparse).equals(expected)).toBe(true);
      const info = await run('qemu-img', ['info', '-f', 'raw', unixUri(socket, 'flat')]);
      expect(info).toMatch(/virtual size: 8 MiB \(8388608 bytes\)/);
    } finally {
      await host.close();
    }
  });

  it('qemu-io random writes with patterns read back; after the server stops, vmseal decrypts the same content', async () => {
    const dir = join(tmp.dir, 'io');
    await run('mkdir', ['-p', dir]);
    const size = 16 * MiB;
    const initial = random(size);
    const flat = await encryptedDisk(dir, 'flat', { subformat: 'monolithicFlat', capacity: size, content: initial });
    const sparse = await encryptedDisk(dir, 'sparse', { subformat: 'monolithicSparse', capacity: size, unitSize: 4096 });
    const models = { flat: Buffer.from(initial), sparse: Buffer.alloc(size) };
    // Unaligned offsets and lengths too: qemu-io honours the advertised minimum with read-modify-write of its own,
    // and the server's own read-modify-write serves the rest.
    const writes: Array<[number, number, number]> = [];
    let seed = 7;
    const next = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (let i = 0; i < 24; i++) {
      const len = 1 + next(300_000);
      writes.push([next(size - len), len, 1 + next(250)]);
    }
    const { host, socket } = await startHost(dir, [{ path: flat }, { path: sparse }]);
    try {
      for (const name of ['flat', 'sparse'] as const) {
        const args = ['-f', 'raw'];
        for (const [off, len, pat] of writes) {
          args.push('-c', `write -P ${pat} ${off} ${len}`);
          models[name].fill(pat, off, off + len);
        }
        args.push('-c', 'flush');
        // Zeroing through WRITE_ZEROES, then reading zeros.
        args.push('-c', `write -z 1000 200000`, '-c', 'read -P 0 1000 200000');
        models[name].fill(0, 1000, 201000);
        const [lo, llen, lpat] = writes[writes.length - 1];
        args.push('-c', `read -P ${lpat} ${lo} ${llen}`);
        const out = await run('qemu-io', [...args, unixUri(socket, name)]);
        expect(out).not.toMatch(/fail|error/i);
        // Everything the client wrote reads back through the server.
        const back = join(dir, `${name}.back`);
        await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', unixUri(socket, name), back]);
        expect(readFileSync(back).equals(models[name])).toBe(true);
      }
    } finally {
      await host.close();
    }
    expect((await plaintextOf(flat)).equals(models.flat)).toBe(true);
    expect((await plaintextOf(sparse)).equals(models.sparse)).toBe(true);
    expect(await run('qemu-img', ['check', sparse])).toMatch(/No errors/);
  });

  it('qemu-img convert INTO a flat encrypted export (it tries FAST_ZERO first) and nbdcopy with several connections', async () => {
    const dir = join(tmp.dir, 'into');
    await run('mkdir', ['-p', dir]);
    const content = Buffer.concat([random(3 * MiB), Buffer.alloc(2 * MiB), random(3 * MiB)]);
    const plain = plainRaw(dir, 'plain', content);
    const flat = await encryptedDisk(dir, 'flat', { subformat: 'monolithicFlat', capacity: 8 * MiB, content: random(8 * MiB) });
    const sparse = await encryptedDisk(dir, 'sparse', { subformat: 'monolithicSparse', capacity: 8 * MiB, content: random(8 * MiB) });
    const { host, socket } = await startHost(dir, [{ path: flat }, { path: sparse, shared: 4 }]);
    try {
      await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', plain, unixUri(socket, 'flat')]);
      await run('nbdcopy', ['--connections=4', plain, unixUri(socket, 'sparse')]);
      expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', unixUri(socket, 'flat'), plain])).toMatch(/identical/);
      expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', unixUri(socket, 'sparse'), plain])).toMatch(/identical/);
    } finally {
      await host.close();
    }
    expect((await plaintextOf(flat)).equals(content)).toBe(true);
    expect((await plaintextOf(sparse)).equals(content)).toBe(true);
  });
});
