// backup list / verify / prune: what verify finds, what prune keeps and deletes, and a prune racing
// a backup that shares its chunks (the repository lock makes the backup's manifest whole).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, listBackups, pruneBackup, verifyBackup, BackupError } from '../../src/backup/index.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal, vmsealChild } from '../cli/run-cli.js';
import { encryptedDisk } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let diskA: string;
let diskB: string;
beforeAll(async () => {
  tmp = tempDir('vmseal-backup-maintain-');
  diskA = await encryptedDisk(tmp.dir, 'a', 'monolithicSparse', 8 * MiB, [{ at: 0, data: patternBytes(3 * MiB, 31) }]);
  diskB = await encryptedDisk(tmp.dir, 'b', 'monolithicSparse', 8 * MiB, [{ at: 0, data: patternBytes(2 * MiB, 32) }]);
});
afterAll(() => tmp.cleanup());

function chunkFiles(repo: string): string[] {
  return readdirSync(join(repo, 'chunks'), { recursive: true, encoding: 'utf8' }).filter((f) => /[0-9a-f]{64}$/.test(f));
}

describe('backup verify', () => {
  it('finds altered, missing and surplus-damaged chunks and damaged manifests', async () => {
    const repo = join(tmp.dir, 'v');
    await initRepository(repo);
    const p = await createBackup(diskA, repo);
    expect(await verifyBackup(repo)).toMatchObject({ ok: true, points: 1, chunks: 3, bytes: 3 * MiB, problems: [] });
    const m = JSON.parse(readFileSync(join(repo, 'points', `${p.point}.json`), 'utf8'));
    const [h0, h1] = [m.layers[0].chunks[0][1], m.layers[0].chunks[1][1]];
    const f0 = join(repo, 'chunks', h0.slice(0, 2), h0);
    const bytes = readFileSync(f0);
    bytes[7] ^= 0x40;
    writeFileSync(f0, bytes);
    unlinkSync(join(repo, 'chunks', h1.slice(0, 2), h1));
    writeFileSync(join(repo, 'points', '20200101T000000000Z-00000000.json'), '{"format":');
    const v = await verifyBackup(repo);
    expect(v.ok).toBe(false);
    expect(v.problems).toEqual(
      expect.arrayContaining([
        { point: p.point, chunk: h0, problem: `chunk ${h0} does not hash to its name (its content was altered)` },
        { point: p.point, chunk: h1, problem: `chunk ${h1} is missing` },
        { point: '20200101T000000000Z-00000000', problem: 'the manifest of point 20200101T000000000Z-00000000 is not JSON (a damaged file?)' },
      ]),
    );
    expect(v.problems).toHaveLength(3);
    // One point only: its manifest and chunks.
    expect((await verifyBackup(repo, p.point)).problems).toHaveLength(2);
    const cli = await vmseal(['backup', 'verify', repo], cleanEnv());
    expect(cli.code).toBe(6);
    expect(cli.stdout).toMatch(/^DAMAGED {2}.*: 1 points, 3 chunks/);
    expect(cli.stderr).toMatch(/^vmseal: cannot verify the backup repository .*: 3 problems found\./);
  });
});

describe('backup prune', () => {
  it('keeps the newest N points per history and deletes every chunk no remaining point names', async () => {
    const repo = join(tmp.dir, 'p');
    await initRepository(repo);
    const a1 = await createBackup(diskA, repo, { history: 'a' });
    const b1 = await createBackup(diskB, repo, { history: 'b' });
    const a2 = await createBackup(diskB, repo, { history: 'a' }); // a's newest point now holds B's chunks
    expect(chunkFiles(repo)).toHaveLength(5);
    const leftover = join(repo, 'chunks', 'ab', `${'ab'.repeat(32)}.tmp-1-0123456789ab`);
    writeFileSync(leftover, 'half a chunk');
    const r = await pruneBackup(repo, { keepLast: 1 });
    expect(r).toEqual({ removedPoints: [a1.point], keptPoints: 2, removedChunks: 3, freedBytes: 3 * MiB });
    expect(existsSync(leftover)).toBe(false);
    expect((await listBackups(repo)).points.map((p) => p.id)).toEqual([b1.point, a2.point]);
    expect(await verifyBackup(repo)).toMatchObject({ ok: true, chunks: 2 });
    expect(await pruneBackup(repo, { keepLast: 1 })).toMatchObject({ removedPoints: [], removedChunks: 0 });
    await expect(pruneBackup(repo, { keepLast: 0 })).rejects.toThrow(/Expected a positive integer for options.keepLast but received 0 of type number/);
  });

  it('stops at a damaged manifest (its chunks are unknown) and deletes nothing', async () => {
    const repo = join(tmp.dir, 'pd');
    await initRepository(repo);
    await createBackup(diskA, repo, { history: 'a' });
    await createBackup(diskB, repo, { history: 'a' });
    writeFileSync(join(repo, 'points', '20200101T000000000Z-00000000.json'), '[]');
    const err = await pruneBackup(repo, { keepLast: 1 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupError);
    expect((err as BackupError).code).toBe('ERR_BACKUP_MANIFEST');
    expect(chunkFiles(repo)).toHaveLength(5);
  });
});

describe('prune racing a backup', () => {
  it('loses no chunk the backup names: the backup and prune take the repository lock in turn', async () => {
    // history "a": an old point of X, then a point of Y. Pruning "a" deletes X's chunks unless the
    // backup of X's copy (history "c", same chunks) is already in a manifest.
    const x = await encryptedDisk(tmp.dir, 'x', 'monolithicSparse', 32 * MiB, [{ at: 0, data: patternBytes(24 * MiB, 33) }]);
    const template = join(tmp.dir, 'race-template');
    await initRepository(template);
    await createBackup(x, template, { history: 'a' });
    await createBackup(diskB, template, { history: 'a' });
    const copy = join(tmp.dir, 'x-copy.vmdk');
    execFileSync('cp', [x, copy]);
    const env = cleanEnv();
    for (let round = 0; round < 2; round++) {
      const repo = join(tmp.dir, `race-${round}`);
      execFileSync('cp', ['-a', template, repo]);
      const runChild = (args: string[]) =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const c = vmsealChild(args, env);
          let stdout = '';
          let stderr = '';
          c.stdout.on('data', (d) => (stdout += String(d)));
          c.stderr.on('data', (d) => (stderr += String(d)));
          c.on('close', (code) => resolve({ code, stdout, stderr }));
        });
      // Started in both orders across rounds; each waits for the other's lock.
      const backupArgs = ['backup', 'create', copy, repo, '--history', 'c', '--wait', '60', '--json'];
      const pruneArgs = ['backup', 'prune', repo, '--keep-last', '1', '--wait', '60', '--json'];
      const [b, p] =
        round % 2 === 0
          ? await Promise.all([runChild(backupArgs), runChild(pruneArgs)])
          : await Promise.all([runChild(pruneArgs), runChild(backupArgs)]).then(([pp, bb]) => [bb, pp] as const);
      expect(b.code, b.stderr).toBe(0);
      expect(p.code, p.stderr).toBe(0);
      const point = json({ ...b, signal: null }).point as string;
      const v = await verifyBackup(repo, point);
      expect(v.problems, `round ${round}`).toEqual([]);
      expect(v.chunks).toBe(24);
      expect((await verifyBackup(repo)).ok).toBe(true);
    }
  });
});
