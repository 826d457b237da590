// `vmseal host backup` of an export that serves a snapshot chain already (base + a child made by
// `vmseal snapshot create` before serving, then one more live snapshot left uncommitted): the served
// top is frozen by a live snapshot, backed up as a chain point (the chain's merged ciphertext view),
// and the new child is committed back into the layer it came from, so the export serves the same
// chain again. A client writes through the export while the first backup runs; each point restores
// to exactly what the client had written at its snapshot instant, and a point taken with no writes
// after it equals, by hash, `qemu-img convert -O raw` of the chain once the server stopped.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedSnapshot, initRepository, openDisk, restoreBackup } from '../../src/index.js';
import { readPoint } from '../../src/backup/points.js';
import { openRepository } from '../../src/backup/repository.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, PASSPHRASE, plaintextOf, run, startHost, whileWriting } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
const BLOCK = 64 * KiB;
const CAPACITY = 16 * MiB;
/** The writer's blocks: one after the other from here, none overlapping. */
const FIRST = 6 * MiB;
const MAX_BLOCKS = (CAPACITY - FIRST - MiB) / BLOCK;

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-hostbackup-chain-');
});
afterAll(() => tmp?.cleanup());

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('host backup of a served chain', () => {
  it('backs up the served top as a chain point and commits the snapshot back into it; points exact, chain kept', async () => {
    const dir = join(tmp.dir, 'chain');
    mkdirSync(dir, { mode: 0o700 });
    const model = Buffer.alloc(CAPACITY);
    const inBase = randomBytes(2 * MiB);
    inBase.copy(model);
    const base = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: CAPACITY, content: inBase });
    // A child made before serving, holding data of its own over the base's and beside it.
    const child = await createEncryptedSnapshot(base, { keys: KEYS });
    const d = await openDisk(child, { keys: KEYS });
    try {
      for (const [at, fill] of [
        [MiB, 0x21],
        [3 * MiB + 4 * KiB, 0x22],
      ] as const) {
        const b = Buffer.alloc(128 * KiB, fill);
        await d.write(at, b);
        b.copy(model, at);
      }
    } finally {
      await d.close();
    }

    const control = join(dir, 'ctl', 'serve.sock');
    const { host, socket, lines } = await startHost(dir, [{ path: child, name: 'vm' }], { control });
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
    const repo = join(dir, 'repo');
    const writer = await RawClient.connect(socket);
    let closed = false;
    try {
      await initRepository(repo);
      await writer.go('vm');
      const write = async (offset: number, data: Buffer): Promise<void> => {
        const r = await writer.request(CMD.WRITE, offset, data.length, 0, data);
        expect(r.error).toBe(0);
        data.copy(model, offset);
      };
      await write(4 * MiB, randomBytes(32 * KiB));

      // Backup 1 while the writer writes block after block, one in flight at a time.
      const patterns: Buffer[] = [];
      const { result: b1 } = await whileWriting(
        vmseal(['host', 'backup', 'vm', repo, '--name', 'p1', '--control', control, '--json'], env),
        async (i) => {
          const p = randomBytes(BLOCK);
          await write(FIRST + i * BLOCK, p);
          patterns.push(p);
        },
        MAX_BLOCKS,
      );
      expect(b1.code, b1.stderr).toBe(0);
      const r1 = json(b1);
      const temporary = join(dir, 'vm-000002.vmdk');
      expect(r1).toMatchObject({ ok: true, command: 'host backup', name: 'p1', frozen: child, top: child, committed: { removed: temporary } });
      expect(lines.some((l) => /snapshot committed: .*vm-000002\.vmdk merged/.test(l))).toBe(true);
      // The export serves the chain it served before; the temporary child is gone.
      expect(host.exports()[0]).toMatchObject({ name: 'vm', path: child });
      expect(existsSync(temporary)).toBe(false);
      // A chain point: both layers recorded, the served top backed up, the base's history continued.
      const m1 = await readPoint(await openRepository(repo), r1.point as string);
      expect(m1.chain?.layers.map((l) => l.path)).toEqual([base, child]);
      expect(m1.chain?.backedUp).toBe(1);

      // Point 1 holds the writes before the snapshot: a prefix of the writer's sequence.
      const restored1 = join(dir, 'restored1.vmdk');
      await restoreBackup(repo, 'p1', restored1);
      const p1 = await plaintextOf(restored1);
      const present = patterns.map((p, i) => p1.subarray(FIRST + i * BLOCK, FIRST + (i + 1) * BLOCK).equals(p));
      const k = present.indexOf(false) === -1 ? patterns.length : present.indexOf(false);
      expect(
        present.slice(k).every((x) => !x),
        'point 1 holds a prefix of the writes',
      ).toBe(true);
      const expected1 = Buffer.from(model);
      for (let i = k; i < patterns.length; i++) expected1.fill(0, FIRST + i * BLOCK, FIRST + (i + 1) * BLOCK);
      expect(sha(p1)).toBe(sha(expected1));

      // A live snapshot taken by hand and left uncommitted: the export serves three layers.
      const manual = json(await vmseal(['host', 'snapshot', 'vm', '--control', control, '--json'], env));
      expect(manual.top).toBe(temporary);
      await write(2 * MiB + 8 * KiB, randomBytes(16 * KiB));

      // Backup 2, nothing written during it: a point of the three-layer chain, committed back into its top.
      const b2 = await vmseal(['host', 'backup', 'vm', repo, '--name', 'p2', '--control', control, '--json'], env);
      expect(b2.code, b2.stderr).toBe(0);
      const r2 = json(b2);
      expect(r2).toMatchObject({ frozen: temporary, top: temporary, committed: { removed: join(dir, 'vm-000003.vmdk') }, parent: r1.point });
      expect((await readPoint(await openRepository(repo), r2.point as string)).chain?.layers.map((l) => l.path)).toEqual([base, child, temporary]);
      expect(r2.changeBitmap.used).toBe(false); // the served top's bits had no base point yet
      expect(sha(await readExport(writer))).toBe(sha(model));

      // Backup 3 after writes in two chunks: the served top's change bitmap, based on point 2 and
      // carried through its commit, makes it read those two chunks only.
      await write(5 * MiB + 4 * KiB, randomBytes(8 * KiB));
      await write(13 * MiB, randomBytes(4 * KiB));
      const b3 = await vmseal(['host', 'backup', 'vm', repo, '--name', 'p3', '--control', control, '--json'], env);
      expect(b3.code, b3.stderr).toBe(0);
      const r3 = json(b3);
      expect(r3).toMatchObject({ frozen: temporary, top: temporary, parent: r2.point, changeBitmap: { used: true, base: r2.point }, chunksRead: 2 });
      expect(existsSync(`${join(dir, 'vm-000003.vmdk')}.vmseal-ctk`)).toBe(false);

      writer.close();
      await host.close();
      closed = true;
      // The chain as the server left it, by qemu-img (ciphertext, no key), equals the restored point 3.
      const restored2 = join(dir, 'restored2.vmdk');
      await restoreBackup(repo, 'p3', restored2);
      const chainRaw = join(dir, 'chain.raw');
      const pointRaw = join(dir, 'point.raw');
      await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', temporary, chainRaw]);
      await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', restored2, pointRaw]);
      expect(sha(readFileSync(pointRaw))).toBe(sha(readFileSync(chainRaw)));
      expect(sha(await plaintextOf(restored2))).toBe(sha(model));
      expect(sha(await plaintextOf(temporary))).toBe(sha(model));
    } finally {
      if (!closed) {
        writer.close();
        await host.close();
      }
    }
  }, 60_000);
});

/** Everything the export serves, read through NBD. */
async function readExport(c: RawClient): Promise<Buffer> {
  const out = Buffer.alloc(CAPACITY);
  for (let at = 0; at < CAPACITY; at += MiB) {
    const r = await c.request(CMD.READ, at, MiB);
    expect(r.error).toBe(0);
    r.data.copy(out, at);
  }
  return out;
}
