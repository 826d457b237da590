// `vmseal host backup` with its commit step: a client writes through the export while the first
// backup runs; each backup's snapshot child is merged back into the disk live, so the second backup
// is taken of one layer again and reads only the chunks changed since the first (the change bitmap
// carried through the commit); both points restore to exactly what the client had written at their
// snapshot instant, and the served disk holds everything. NbdHost.commit itself: host-commit.test.ts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { initRepository, restoreBackup } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, PASSPHRASE, plaintextOf, startHost, whileWriting } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
const BLOCK = 64 * KiB;
const CAPACITY = 24 * MiB;
/** The writer's blocks: one after the other from here, none overlapping. */
const FIRST = 4 * MiB;
const MAX_BLOCKS = (CAPACITY - FIRST - 2 * MiB) / BLOCK;

let tmp: ReturnType<typeof tempDir>;
let n = 0;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-hostcommit-');
});
afterAll(() => tmp?.cleanup());

function sub(): string {
  const dir = join(tmp.dir, String(++n));
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const chunkOf = (offset: number): number => Math.floor(offset / MiB);

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

/** Files beside the disk other than the disk itself, its change bitmap, lock files and the test's own. */
function leftovers(dir: string): string[] {
  return readdirSync(dir).filter((f) => !/^(vm\.vmdk(\.vmseal-ctk|\.vmseal-lock)?|\.vmseal-lock|repo|pw|ctl|nbd\.sock|restored.*)$/.test(f));
}

describe('host backup commits its snapshot', () => {
  it('two backups while a client writes: no chain left, the second reads only the changed chunks, both points exact', async () => {
    const dir = sub();
    const before = randomBytes(2 * MiB);
    const disk = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: CAPACITY, content: before });
    const control = join(dir, 'ctl', 'serve.sock');
    const { host, socket, lines } = await startHost(dir, [{ path: disk }], { control });
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
    const repo = join(dir, 'repo');
    const writer = await RawClient.connect(socket);
    try {
      await initRepository(repo);
      await writer.go('vm');
      const model = Buffer.alloc(CAPACITY);
      before.copy(model);
      const patterns: Buffer[] = [];
      const write = async (offset: number, data: Buffer): Promise<void> => {
        const r = await writer.request(CMD.WRITE, offset, data.length, 0, data);
        expect(r.error).toBe(0);
        data.copy(model, offset);
      };

      // Backup 1, while the writer writes block after block (one in flight at a time) until the commit is done.
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
      expect(r1).toMatchObject({ ok: true, command: 'host backup', name: 'p1', frozen: disk, top: disk, committed: { removed: join(dir, 'vm-000001.vmdk') } });
      expect(lines.some((l) => /snapshot committed: .*vm-000001\.vmdk merged/.test(l))).toBe(true);
      // The export serves the base disk again; the child is gone.
      expect(host.exports()[0]).toMatchObject({ name: 'vm', path: disk });
      expect(leftovers(dir)).toEqual([]);

      // Point 1 holds the blocks written before the snapshot: a prefix of the writer's sequence.
      const restored1 = join(dir, 'restored1.vmdk');
      await restoreBackup(repo, 'p1', restored1);
      const p1 = await plaintextOf(restored1);
      expect(p1.subarray(0, FIRST).equals(model.subarray(0, FIRST))).toBe(true);
      const present = patterns.map((p, i) => p1.subarray(FIRST + i * BLOCK, FIRST + (i + 1) * BLOCK).equals(p));
      const k = present.indexOf(false) === -1 ? patterns.length : present.indexOf(false);
      expect(
        present.slice(k).every((x) => !x),
        'point 1 holds a prefix of the writes',
      ).toBe(true);
      expect(k, 'writes before the snapshot').toBeGreaterThan(0);
      expect(k, 'writes after the snapshot (into the child)').toBeLessThan(patterns.length);
      const expected1 = Buffer.from(model);
      for (let i = k; i < patterns.length; i++) expected1.fill(0, FIRST + i * BLOCK, FIRST + (i + 1) * BLOCK);
      expect(sha(p1)).toBe(sha(expected1));

      // Writes after the commit, in chunks of their own.
      const late = [0, 22 * MiB + 8 * KiB, 21 * MiB];
      for (const at of late) await write(at, randomBytes(16 * KiB));
      const changed = new Set([...late.map(chunkOf), ...patterns.slice(k).map((_, i) => chunkOf(FIRST + (k + i) * BLOCK))]);

      // Backup 2 (refused before this change: the export was left a chain) reads only those chunks.
      const b2 = await vmseal(['host', 'backup', 'vm', repo, '--name', 'p2', '--control', control, '--json'], env);
      expect(b2.code, b2.stderr).toBe(0);
      const r2 = json(b2);
      expect(r2.changeBitmap).toEqual({ used: true, base: r1.point });
      expect(r2.chunksRead).toBe(changed.size);
      expect(r2.bytesRead).toBe(changed.size * MiB);
      expect(r2.top).toBe(disk);
      expect(leftovers(dir)).toEqual([]);

      // The served disk and point 2 hold every write.
      expect(sha(await readExport(writer))).toBe(sha(model));
      const restored2 = join(dir, 'restored2.vmdk');
      await restoreBackup(repo, 'p2', restored2);
      expect(sha(await plaintextOf(restored2))).toBe(sha(model));
    } finally {
      writer.close();
      await host.close();
    }
    expect(sha(await plaintextOf(disk))).toBe(sha(await plaintextOf(join(dir, 'restored2.vmdk'))));
  }, 60_000);
});
