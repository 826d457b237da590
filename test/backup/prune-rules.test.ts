// backup prune --before-rekey and --plain (issue 11 §2, "What the repository reveals"): after a deep
// rekey, the points under the old disk key go and the repository still verifies and restores; plain
// points taken before encryption go with --plain, and only they.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupError, createBackup, initRepository, listBackups, pruneBackup, restoreBackup, verifyBackup } from '../../src/backup/index.js';
import { openDisk } from '../../src/disk/index.js';
import { deepRekey, encryptDisk } from '../../src/pipeline/index.js';
import { patternBytes, phraseLocker, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, PASS, plainSha } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-prune-rules-');
});
afterAll(() => tmp.cleanup());

async function write(path: string, at: number, data: Buffer): Promise<void> {
  const d = await openDisk(path, { keys: { passphrase: PASS } });
  try {
    await d.write(at, data);
  } finally {
    await d.close();
  }
}

describe('backup prune --before-rekey', () => {
  it('after a deep rekey, removes the points under the old disk key only; verify passes and the rest restores', async () => {
    const dir = join(tmp.dir, 'rekey');
    mkdirSync(dir);
    const disk = await encryptedDisk(dir, 'd', 'monolithicSparse', 4 * MiB, [{ at: 0, data: patternBytes(2 * MiB, 1) }]);
    const repo = join(dir, 'repo');
    await initRepository(repo);
    // Another disk's history, with one DEK: untouched.
    const other = await encryptedDisk(dir, 'o', 'monolithicFlat', 2 * MiB, [{ at: 4096, data: patternBytes(8192, 3) }]);
    const otherPoint = await createBackup(other, repo);
    const old1 = await createBackup(disk, repo);
    await write(disk, MiB, patternBytes(65536, 2));
    const old2 = await createBackup(disk, repo);
    // In place: the disk keeps its descriptor's ddb.uuid, so its history (a copy-mode rekey writes a new disk: --history then).
    await deepRekey(disk, { keys: { passphrase: PASS }, lockers: [phraseLocker(PASS)], inPlace: true });
    const now = await createBackup(disk, repo, { name: 'after' });
    expect(now.history).toBe(old1.history);
    expect(now.newChunks).toBe(now.chunks); // a new DEK: every chunk is new

    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') });
    const r = json(await vmseal(['backup', 'prune', repo, '--before-rekey', '--json'], env));
    expect(r.removedPoints).toEqual([old1.point, old2.point].sort());
    expect(r.removedChunks).toBeGreaterThan(0);
    const left = (await listBackups(repo)).points.map((p) => p.id);
    expect(left.sort()).toEqual([otherPoint.point, now.point].sort());
    expect(await verifyBackup(repo)).toMatchObject({ ok: true, points: 2 });
    const out = join(dir, 'out.vmdk');
    await restoreBackup(repo, 'after', out);
    expect(await plainSha(out)).toBe(await plainSha(disk));
    // Nothing more to remove: the history's points are all of its current key.
    expect((await pruneBackup(repo, { beforeRekey: true })).removedPoints).toEqual([]);
  });
});

describe('backup prune --plain', () => {
  it('plain points, then encrypted ones in the same history: --before-rekey keeps the plain ones, --plain removes only them', async () => {
    const dir = join(tmp.dir, 'plain');
    mkdirSync(dir);
    const plain = join(dir, 'p.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', plain, '3M']);
    execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x41 0 1M', plain]);
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p1 = await createBackup(plain, repo, { allowPlain: true, history: 'vm1' });
    execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x42 1M 64k', plain]);
    const p2 = await createBackup(plain, repo, { allowPlain: true, history: 'vm1' });
    const enc = join(dir, 'e.vmdk');
    await encryptDisk(plain, enc, { lockers: [phraseLocker(PASS)] });
    const e1 = await createBackup(enc, repo, { history: 'vm1' });
    expect(e1.parent).toBe(p2.point);

    expect((await pruneBackup(repo, { beforeRekey: true })).removedPoints).toEqual([]);
    const r = json(await vmseal(['backup', 'prune', repo, '--plain', '--json'], cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') })));
    expect(r.removedPoints).toEqual([p1.point, p2.point].sort());
    expect(r.keptPoints).toBe(1);
    expect((await listBackups(repo)).points.map((p) => p.id)).toEqual([e1.point]);
    expect(await verifyBackup(repo)).toMatchObject({ ok: true, points: 1 });
    const out = join(dir, 'out.vmdk');
    await restoreBackup(repo, e1.point, out);
    expect(existsSync(out)).toBe(true);
    expect(await plainSha(out)).toBe(await plainSha(enc));
  });

  it('refuses a prune without a rule (library: ERR_INVALID_ARGUMENT; CLI: exit 2)', async () => {
    const repo = join(tmp.dir, 'norule');
    await initRepository(repo);
    await expect(pruneBackup(repo, {})).rejects.toSatisfy((e: unknown) => e instanceof BackupError && e.code === 'ERR_INVALID_ARGUMENT');
    const r = await vmseal(['backup', 'prune', repo], cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'no-home') }));
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--before-rekey');
  });
});
