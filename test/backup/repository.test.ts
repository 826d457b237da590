// The repository format (docs/backup.md): what `init` makes, what open refuses, chunk writes that
// are whole or absent, and the repository lock (create/restore/verify shared, prune exclusive).
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRepository, BackupError } from '../../src/backup/index.js';
import { openRepository, sha256Hex } from '../../src/backup/repository.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-repo-');
});
afterAll(() => tmp.cleanup());

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(BackupError);
    return (err as BackupError).code;
  }
  throw new Error('expected a BackupError');
}

describe('backup init', () => {
  it('makes the format file, 256 chunk folders and points/', async () => {
    const repo = join(tmp.dir, 'r1');
    const info = await initRepository(repo);
    const format = JSON.parse(readFileSync(join(repo, 'vmseal-backup.json'), 'utf8'));
    expect(format).toMatchObject({ format: 'vmseal-backup', version: 1, id: info.id, chunkSize: 1048576, hash: 'sha256' });
    expect(info.id).toMatch(/^[0-9a-f]{32}$/);
    const fans = readdirSync(join(repo, 'chunks'));
    expect(fans).toHaveLength(256);
    expect(fans).toContain('00');
    expect(fans).toContain('ff');
    expect(readdirSync(join(repo, 'points'))).toEqual([]);
    expect(statSync(repo).mode & 0o777).toBe(0o700);
    expect((await openRepository(repo)).id).toBe(info.id);
  });

  it('refuses a folder that is not empty, and an existing repository', async () => {
    const full = join(tmp.dir, 'full');
    mkdirSync(full);
    writeFileSync(join(full, 'x'), 'x');
    expect(await code(initRepository(full))).toBe('ERR_BACKUP_REPOSITORY');
    const repo = join(tmp.dir, 'r2');
    await initRepository(repo);
    await expect(initRepository(repo)).rejects.toThrow(/already a backup repository/);
  });

  it('open refuses a folder without a format file, a damaged one and a newer version', async () => {
    const empty = join(tmp.dir, 'empty');
    mkdirSync(empty);
    await expect(openRepository(empty)).rejects.toThrow(/has no vmseal-backup.json \(make one with `vmseal backup init`\)/);
    const repo = join(tmp.dir, 'r3');
    await initRepository(repo);
    const file = join(repo, 'vmseal-backup.json');
    const good = readFileSync(file, 'utf8');
    writeFileSync(file, '{not json');
    expect(await code(openRepository(repo))).toBe('ERR_BACKUP_REPOSITORY');
    writeFileSync(file, good.replace('"version": 1', '"version": 2'));
    await expect(openRepository(repo)).rejects.toThrow(/has format version 2; this vmseal reads version 1 \(use a newer vmseal\)/);
  });
});

describe('chunks', () => {
  it('are stored once under their SHA-256, fanned out by the first byte; a leftover temp file is not a chunk', async () => {
    const info = await initRepository(join(tmp.dir, 'r4'));
    const repo = await openRepository(info.path);
    const data = Buffer.from('some ciphertext');
    const h = sha256Hex(data);
    expect(await repo.putChunk(h, data)).toBe(true);
    expect(await repo.putChunk(h, data)).toBe(false);
    expect(readFileSync(join(info.path, 'chunks', h.slice(0, 2), h))).toEqual(data);
    writeFileSync(join(info.path, 'chunks', h.slice(0, 2), `${'ab'.repeat(32)}.tmp-1-0123456789ab`), 'half');
    const scan = await repo.scanChunks();
    expect(scan.hashes).toEqual([h]);
    expect(scan.leftovers).toHaveLength(1);
    const back = Buffer.alloc(data.length);
    await repo.readChunk(h, back);
    expect(back).toEqual(data);
    writeFileSync(repo.chunkPath(h), 'Some ciphertext');
    await expect(repo.readChunk(h, back)).rejects.toThrow(/does not hash to its name/);
  });
});

describe('the repository lock', () => {
  it('is shared between readers and exclusive for prune', async () => {
    const info = await initRepository(join(tmp.dir, 'r5'));
    const repo = await openRepository(info.path);
    const a = await repo.lock('shared', 'create');
    const b = await repo.lock('shared', 'verify');
    expect(await code(repo.lock('exclusive', 'prune'))).toBe('ERR_BACKUP_BUSY');
    a.release();
    b.release();
    const p = await repo.lock('exclusive', 'prune');
    await expect(repo.lock('shared', 'create')).rejects.toThrow(/is in use by vmseal \(pid \d+, backup prune since/);
    p.release();
  });
});

describe('vmseal backup prune against a running backup', () => {
  it('exits 7 naming the holder, and says --wait; with --wait it runs once the lock is free', async () => {
    const info = await initRepository(join(tmp.dir, 'busy'));
    const repo = await openRepository(info.path);
    const held = await repo.lock('shared', 'create');
    let released = false;
    try {
      const r = await vmseal(['backup', 'prune', info.path, '--keep-last', '1'], cleanEnv());
      expect(r.code).toBe(7);
      expect(r.stderr).toMatch(/^vmseal: cannot prune the backup repository .*: .* is in use by another process \(for reading\).*or give --wait SECONDS/);
      const waiting = vmseal(['backup', 'prune', info.path, '--keep-last', '1', '--wait', '30', '--json'], cleanEnv());
      setTimeout(() => {
        held.release();
        released = true;
      }, 1500);
      const w = await waiting;
      expect(released).toBe(true);
      expect(json(w)).toMatchObject({ ok: true, command: 'backup prune', removedPoints: [] });
    } finally {
      held.release();
    }
  });
});

describe('vmseal backup init', () => {
  it('prints the repository and its id', async () => {
    const repo = join(tmp.dir, 'cli');
    const r = json(await vmseal(['backup', 'init', repo, '--json'], cleanEnv()));
    expect(r).toMatchObject({ ok: true, command: 'backup init', repository: repo, chunkSize: 1048576 });
    const again = await vmseal(['backup', 'init', repo], cleanEnv());
    expect(again.code).toBe(5);
    expect(again.stderr).toMatch(/^vmseal: cannot make the backup repository .*already a backup repository.*Give the folder made by `vmseal backup init`/);
  });
});
