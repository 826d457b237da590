// `NbdHost.commit` (vmseal host commit): the top layer of a served chain merged back into its
// parent live, for an encrypted sparse, an encrypted flat and a plain qemu-img disk; the errors
// (no chain, a parent another process reads) leave the export serving its chain, writable.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { initRepository, type NbdHost } from '../../src/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, plaintextOf, run, startHost } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
const BLOCK = 64 * KiB;

let tmp: ReturnType<typeof tempDir>;
let n = 0;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-livecommit-');
});
afterAll(() => tmp?.cleanup());

function sub(): string {
  const dir = join(tmp.dir, String(++n));
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}

/** [0, size) of the export, in 1 MiB reads (the test client is slow with larger replies). */
async function readAll(c: RawClient, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  for (let at = 0; at < size; at += MiB) {
    const r = await c.request(CMD.READ, at, MiB);
    expect(r.error).toBe(0);
    r.data.copy(out, at);
  }
  return out;
}

describe('NbdHost.commit', () => {
  async function served(dir: string): Promise<{ host: NbdHost; socket: string; disk: string; lines: string[] }> {
    const disk = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: 8 * MiB, content: randomBytes(MiB) });
    return { disk, ...(await startHost(dir, [{ path: disk }])) };
  }

  it('refuses an export that serves no chain, and one whose parent another process reads; the export serves its chain on', async () => {
    const dir = sub();
    const { host, socket, disk } = await served(dir);
    const c = await RawClient.connect(socket);
    try {
      await c.go('vm');
      await expect(host.commit('vm')).rejects.toMatchObject({ code: 'ERR_NOT_A_SNAPSHOT' });
      await expect(host.commit('nope')).rejects.toMatchObject({ code: 'ERR_SERVE_NO_EXPORT' });
      const snap = await host.snapshot('vm');
      const a = randomBytes(BLOCK);
      expect((await c.request(CMD.WRITE, 2 * MiB, BLOCK, 0, a)).error).toBe(0);

      // A reader of the frozen parent (a backup of it, another process) keeps the commit out.
      const reader = await acquireLock(disk, 'test reader', 'shared');
      try {
        await expect(host.commit('vm')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY', message: expect.stringMatching(/in use for reading/) });
      } finally {
        await reader.release();
      }
      expect(host.exports()[0]!.path).toBe(snap.path);
      expect(existsSync(`${snap.path}.vmseal-journal`)).toBe(false);
      const r = await c.request(CMD.READ, 2 * MiB, BLOCK);
      expect(r.data.equals(a)).toBe(true);
      const b = randomBytes(BLOCK);
      expect((await c.request(CMD.WRITE, 3 * MiB, BLOCK, 0, b)).error).toBe(0);

      // Now it goes through: the export serves the parent, which holds both writes.
      const done = await host.commit('vm');
      expect(done).toMatchObject({ name: 'vm', path: disk, removed: snap.path, bytesMoved: 2 * BLOCK });
      expect(existsSync(snap.path)).toBe(false);
      const c2 = await c.request(CMD.READ, 2 * MiB, 2 * MiB);
      expect(c2.data.subarray(0, BLOCK).equals(a)).toBe(true);
      expect(c2.data.subarray(MiB, MiB + BLOCK).equals(b)).toBe(true);
      expect((await c.request(CMD.WRITE, 4 * MiB, BLOCK, 0, a)).error).toBe(0);
    } finally {
      c.close();
      await host.close();
    }
    const after = await plaintextOf(disk);
    expect(after.subarray(4 * MiB, 4 * MiB + BLOCK).equals(after.subarray(2 * MiB, 2 * MiB + BLOCK))).toBe(true);
  });

  it('commits a plain qemu-img disk and an encrypted flat one: the parent holds every write and stays consistent', async () => {
    const dir = sub();
    const plain = join(dir, 'plain.vmdk');
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', plain, String(8 * MiB)]);
    const flat = await encryptedDisk(dir, 'flat', { subformat: 'monolithicFlat', capacity: 8 * MiB, content: randomBytes(MiB) });
    const { host, socket } = await startHost(dir, [{ path: plain }, { path: flat }]);
    const models = new Map<string, Buffer>();
    try {
      for (const name of ['plain', 'flat']) {
        const c = await RawClient.connect(socket);
        try {
          await c.go(name);
          const before = await readAll(c, 8 * MiB);
          const write = async (at: number, data: Buffer): Promise<void> => {
            expect((await c.request(CMD.WRITE, at, data.length, 0, data)).error).toBe(0);
            data.copy(before, at);
          };
          await write(MiB, randomBytes(BLOCK));
          await host.snapshot(name);
          await write(MiB + 4 * KiB, randomBytes(8 * KiB));
          await write(6 * MiB, randomBytes(3 * BLOCK));
          await host.commit(name);
          await write(7 * MiB, randomBytes(BLOCK));
          expect((await readAll(c, 8 * MiB)).equals(before)).toBe(true);
          models.set(name, before);
        } finally {
          c.close();
        }
      }
      expect(host.exports().map((e) => e.path)).toEqual([plain, flat]);
    } finally {
      await host.close();
    }
    expect(await run('qemu-img', ['check', plain])).toMatch(/No errors/);
    const out = join(dir, 'plain.raw');
    await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', plain, out]);
    expect(readFileSync(out).equals(models.get('plain')!)).toBe(true);
    expect((await plaintextOf(flat)).equals(models.get('flat')!)).toBe(true);
    expect(readdirSync(dir).filter((f) => /-0000|journal/.test(f))).toEqual([]);
  });

  it('vmseal host commit over the control socket prints the parent; a host backup that fails commits its snapshot back', async () => {
    const dir = sub();
    const disk = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: 8 * MiB, content: randomBytes(MiB) });
    const control = join(dir, 'ctl', 'serve.sock');
    const { host } = await startHost(dir, [{ path: disk }], { control });
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
    try {
      const s = await vmseal(['host', 'snapshot', 'vm', '--control', control], env);
      expect(s.code, s.stderr).toBe(0);
      const c = await vmseal(['host', 'commit', 'vm', '--control', control], env);
      expect(c.code, c.stderr).toBe(0);
      expect(c.stdout).toBe(`${disk}\n`);
      const again = await vmseal(['host', 'commit', 'vm', '--control', control, '--json'], env);
      expect(again.code).toBe(2);
      expect(json(again)).toMatchObject({ ok: false, error: { code: 'ERR_NOT_A_SNAPSHOT' } });

      // A host backup whose backup step fails (a point name it refuses) still commits its snapshot back.
      const repo = join(dir, 'repo');
      await initRepository(repo);
      const b = await vmseal(['host', 'backup', 'vm', repo, '--name', 'latest', '--control', control], env);
      expect(b.code).toBe(2);
      expect(b.stderr).toMatch(/the snapshot .*vm-000001\.vmdk was committed back into .*vm\.vmdk/);
      expect(b.stderr).toMatch(/ERR_INVALID_ARGUMENT|not 'latest'/);
      expect(host.exports()[0]!.path).toBe(disk);
      expect(existsSync(join(dir, 'vm-000001.vmdk'))).toBe(false);
    } finally {
      await host.close();
    }
  });
});
