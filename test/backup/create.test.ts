// backup create: the stored chunks are the disk's ciphertext view as qemu-img sees it (no key
// involved), holes are not stored, chunks are shared across points and disks, and what is refused.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, BackupError } from '../../src/backup/index.js';
import { openRepository } from '../../src/backup/repository.js';
import { readPoint } from '../../src/backup/points.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { encryptedDisk, qemuRaw, type Sub } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-create-');
});
afterAll(() => tmp.cleanup());

const MiB = 1 << 20;

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return (err as BackupError).code;
  }
  throw new Error('expected an error');
}

describe('backup create', () => {
  it.each<Sub>(['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'])(
    '%s: stores exactly the non-zero 1 MiB chunks of the ciphertext view, with the descriptor',
    async (sub) => {
      const dir = join(tmp.dir, sub);
      execFileSync('mkdir', ['-p', dir]);
      const capacity = 6 * MiB + 512 * 7; // a short last chunk
      const disk = await encryptedDisk(dir, 'd', sub, capacity, [
        { at: 0, data: patternBytes(300_000, 1) },
        { at: 3 * MiB + 4096, data: patternBytes(70_000, 2) },
        { at: 6 * MiB, data: patternBytes(512 * 7, 3) },
      ]);
      const repoPath = join(dir, 'repo');
      await initRepository(repoPath);
      const r = await createBackup(disk, repoPath);
      const view = await qemuRaw(disk, join(dir, 'view.raw'));
      expect(view.length).toBe(capacity);
      const want: Array<[number, string]> = [];
      for (let off = 0; off < capacity; off += MiB) {
        const c = view.subarray(off, Math.min(off + MiB, capacity));
        if (c.some((b) => b !== 0)) want.push([off, sha256(c)]);
      }
      const repo = await openRepository(repoPath);
      const m = await readPoint(repo, r.point);
      expect(m.layers).toHaveLength(1);
      expect(m.layers[0]!.chunks).toEqual(want);
      // sparse: only the written chunks; flat: encrypted zeros everywhere, so every chunk
      expect(want.length).toBe(sub.endsWith('Sparse') ? 3 : 7);
      for (const [, h] of want) expect(sha256(readFileSync(repo.chunkPath(h)))).toBe(h);
      expect(m).toMatchObject({ plain: false, capacity, unitSize: 512, chunkSize: MiB, parent: null });
      expect(m.layers[0]!.subformat).toBe(sub);
      expect(m.layers[0]!.descriptor).toMatch(/encryption\.keySafe = "vmware:key\/list/);
      const descriptorFile = sub === 'monolithicSparse' ? undefined : readFileSync(disk, 'utf8');
      if (descriptorFile) expect(m.layers[0]!.descriptor).toBe(descriptorFile);
      expect(r).toMatchObject({ chunks: want.length, newChunks: want.length, plain: false });
    },
  );

  it('writes only chunks not already there: a second point and another disk share them; history and parent', async () => {
    const dir = join(tmp.dir, 'dedup');
    execFileSync('mkdir', ['-p', dir]);
    const disk = await encryptedDisk(dir, 'd', 'monolithicSparse', 8 * MiB, [{ at: 0, data: patternBytes(4 * MiB, 4) }]);
    const repoPath = join(dir, 'repo');
    await initRepository(repoPath);
    const first = await createBackup(disk, repoPath, { name: 'first' });
    expect(first).toMatchObject({ chunks: 4, newChunks: 4, newBytes: 4 * MiB, parent: null, name: 'first' });
    const uuid = /ddb\.uuid = "([^"]+)"/.exec((await readPoint(await openRepository(repoPath), first.point)).layers[0]!.descriptor!)![1];
    expect(first.history).toBe(uuid);
    const second = await createBackup(disk, repoPath);
    expect(second).toMatchObject({ chunks: 4, newChunks: 0, newBytes: 0, parent: first.point, history: uuid });
    // A byte-for-byte copy of the disk files (same DEK) in another history stores nothing new.
    execFileSync('cp', [join(dir, 'd.vmdk'), join(dir, 'c.vmdk')]);
    const third = await createBackup(join(dir, 'c.vmdk'), repoPath, { history: 'other' });
    expect(third).toMatchObject({ newChunks: 0, parent: null, history: 'other' });
    const chunkFiles = readdirSync(join(repoPath, 'chunks'), { recursive: true, encoding: 'utf8' }).filter((f) => /[0-9a-f]{64}$/.test(f));
    expect(chunkFiles).toHaveLength(4);
  });

  it('refuses a plain disk unless allowPlain, which marks the point plain', async () => {
    const dir = join(tmp.dir, 'plain');
    execFileSync('mkdir', ['-p', dir]);
    const raw = join(dir, 'p.raw');
    writeFileSync(raw, patternBytes(2 * MiB, 5));
    const repoPath = join(dir, 'repo');
    await initRepository(repoPath);
    await expect(createBackup(raw, repoPath)).rejects.toThrow(/is not encrypted: its backup would hold its data in plaintext; encrypt it first/);
    expect(await codeOf(createBackup(raw, repoPath))).toBe('ERR_BACKUP_PLAIN');
    const odd = join(dir, 'odd.raw');
    writeFileSync(odd, patternBytes(1000, 9));
    await expect(createBackup(odd, repoPath, { allowPlain: true })).rejects.toThrow(/has 1000 bytes, not a positive whole number of 512-byte sectors/);
    const r = await createBackup(raw, repoPath, { allowPlain: true, history: 'h' });
    expect(r).toMatchObject({ plain: true, chunks: 2 });
    const m = await readPoint(await openRepository(repoPath), r.point);
    expect(m).toMatchObject({ plain: true, unitSize: null, diskId: null });
    expect(m.layers[0]).toMatchObject({ subformat: 'raw', descriptor: null });
  });

  it('refuses a disk held exclusively by another job, one with an interrupted job, and bad options', async () => {
    const dir = join(tmp.dir, 'refuse');
    execFileSync('mkdir', ['-p', dir]);
    const disk = await encryptedDisk(dir, 'd', 'monolithicSparse', 2 * MiB, [{ at: 0, data: patternBytes(4096, 6) }]);
    const repoPath = join(dir, 'repo');
    await initRepository(repoPath);
    const held = await acquireLock(disk, 'encrypt', 'exclusive');
    try {
      expect(await codeOf(createBackup(disk, repoPath))).toBe('ERR_DISK_BUSY');
    } finally {
      await held.release();
    }
    writeFileSync(`${disk}.vmseal-journal`, 'x');
    expect(await codeOf(createBackup(disk, repoPath))).toBe('ERR_INTERRUPTED_JOB');
    execFileSync('rm', [`${disk}.vmseal-journal`]);
    for (const name of ['latest', '20261205T091500123Z-1a2b3c4d', '../x', '']) {
      expect(await codeOf(createBackup(disk, repoPath, { name }))).toBe('ERR_INVALID_ARGUMENT');
    }
    expect(await codeOf(createBackup(disk, repoPath, { history: 'a\nb' }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(createBackup(disk, join(dir, 'nope')))).toBe('ERR_BACKUP_REPOSITORY');
    expect(readdirSync(join(repoPath, 'points'))).toEqual([]);
  });

  it('stops at a cancelled signal with ERR_ABORTED and writes no manifest', async () => {
    const dir = join(tmp.dir, 'abort');
    execFileSync('mkdir', ['-p', dir]);
    const disk = await encryptedDisk(dir, 'd', 'monolithicSparse', 4 * MiB, [{ at: 0, data: patternBytes(3 * MiB, 8) }]);
    const repoPath = join(dir, 'repo');
    await initRepository(repoPath);
    const ac = new AbortController();
    ac.abort();
    const err = await createBackup(disk, repoPath, { signal: ac.signal }).catch((e: unknown) => e);
    expect((err as { code?: string }).code).toBe('ERR_ABORTED');
    expect((err as Error).name).toBe('AbortError');
    expect(readdirSync(join(repoPath, 'points'))).toEqual([]);
  });

  it('refuses a streamOptimized disk', async () => {
    const dir = join(tmp.dir, 'stream');
    execFileSync('mkdir', ['-p', dir]);
    const raw = join(dir, 'p.raw');
    writeFileSync(raw, patternBytes(MiB, 7));
    const s = join(dir, 's.vmdk');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', raw, s]);
    const repoPath = join(dir, 'repo');
    await initRepository(repoPath);
    await expect(createBackup(s, repoPath, { allowPlain: true })).rejects.toThrow(/is a streamOptimized disk, which backups do not store/);
  });
});
