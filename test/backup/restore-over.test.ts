// backup restore --over: quick rollback. Only the chunks that differ from the point are written
// (holes of the point deallocated), the point's descriptor last, as one journaled job (killed
// rollbacks: crash-restore-over.test.ts). End to end on an ext4 image made by qemu-img and mkfs, changed by
// qemu-io: after the rollback the disk is the point's (ciphertext view, allocation, plaintext hash,
// e2fsck -fn), and its next backup continues from the point.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackupOver, resumeBackupRestore } from '../../src/backup/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { encryptDisk } from '../../src/pipeline/index.js';
import { phraseLocker, patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { backupErrorOf, encryptedDisk, noKeyEnv, PASS, qemuDataBytes, run } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-over-');
});
afterAll(() => tmp.cleanup());

const noKey = (): NodeJS.ProcessEnv => noKeyEnv(tmp.dir);

/** The chunk offsets a point lists. */
function pointChunks(repo: string, point: string): number[] {
  const m = JSON.parse(readFileSync(join(repo, 'points', `${point}.json`), 'utf8')) as { layers: Array<{ chunks: Array<[number, string]> }> };
  return m.layers[0]!.chunks.map(([off]) => off);
}

/** qemu-io writes (ciphertext-view bytes, no key: what a careless tool or a guest's damage does). */
function qemuWrite(disk: string, at: number, length: number, pattern: number): void {
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', `write -P ${pattern} ${at} ${length}`, disk], { stdio: 'ignore' });
}

describe('quick rollback of an ext4 disk', () => {
  it('writes only the changed chunks; the disk is the point again (view, allocation, plaintext, e2fsck); its next backup follows the point', async () => {
    const dir = join(tmp.dir, 'ext4');
    const files = join(dir, 'files');
    mkdirSync(join(files, 'sub'), { recursive: true });
    writeFiles(files);
    const image = join(dir, 'fs.img');
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', image, '200M']);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', files, image]);
    const disk = join(dir, 'fs-enc.vmdk');
    await encryptDisk(image, disk, { subformat: 'monolithicSparse', lockers: [phraseLocker(PASS)] });
    const saved = join(dir, 'at-the-point.vmdk');
    copyFileSync(disk, saved);
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo, { name: 'good' });

    // 1% of the 200 chunks change: one chunk the point holds, one that is a hole in it.
    const listed = pointChunks(repo, p.point);
    const hole = Array.from({ length: 200 }, (_, i) => i * MiB).find((off) => !listed.includes(off))!;
    qemuWrite(disk, listed[Math.floor(listed.length / 2)]! + 8192, 65536, 0x55);
    qemuWrite(disk, hole + 4096, 4096, 0x66);
    expect(spawnSync('qemu-img', ['compare', '-q', saved, disk]).status).toBe(1);

    const r = json(await vmseal(['backup', 'restore', repo, 'good', '--over', disk, '--json'], noKey()));
    expect(r).toMatchObject({ ok: true, over: true, point: p.point, chunksWritten: 2, resumed: false });
    expect(r.chunksSame).toBeGreaterThanOrEqual(listed.length - 1);
    execFileSync('qemu-img', ['compare', '-q', saved, disk]);
    expect(await qemuDataBytes(disk)).toBe(await qemuDataBytes(saved));
    expect(existsSync(`${disk}.vmseal-journal`)).toBe(false);

    const dec = join(dir, 'dec.img');
    const d = await vmseal(['decrypt', disk, dec, '--raw'], cleanEnv({ VMSEAL_HOME: join(dir, 'h'), VMSEAL_PASSPHRASE: PASS }));
    expect(d.code, d.stderr).toBe(0);
    expect(sha256(readFileSync(dec))).toBe(sha256(readFileSync(image)));
    await run('e2fsck', ['-fn', dec]);

    // A second rollback finds nothing to do; the next backup continues from the point, storing nothing new.
    expect(await restoreBackupOver(repo, p.point, disk)).toMatchObject({ chunksWritten: 0 });
    expect(await createBackup(disk, repo)).toMatchObject({ parent: p.point, newChunks: 0, history: p.history });
  });
});

function writeFiles(files: string): void {
  writeFileSync(join(files, 'notes.txt'), 'quick-rollback-of-a-guest\n'.repeat(20000));
  writeFileSync(join(files, 'sub', 'data.bin'), patternBytes(5 * MiB, 71));
}

describe('refusals', () => {
  it('refuses another disk (typed error: restore to a new OUT), a busy disk, and leaves both untouched', async () => {
    const dir = join(tmp.dir, 'refuse');
    mkdirSync(dir);
    const disk = await encryptedDisk(dir, 'd', 'monolithicFlat', 4 * MiB, [{ at: 0, data: patternBytes(2 * MiB, 72) }]);
    const other = await encryptedDisk(dir, 'o', 'monolithicFlat', 4 * MiB, [{ at: 0, data: patternBytes(2 * MiB, 72) }]);
    const sparse = await encryptedDisk(dir, 's', 'monolithicSparse', 4 * MiB, []);
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo);
    const before = sha256(readFileSync(join(dir, 'o-flat.vmdk')));
    const e = await backupErrorOf(restoreBackupOver(repo, p.point, other));
    expect(e.code).toBe('ERR_BACKUP_NOT_SAME_DISK');
    expect(e.message).toMatch(
      /is not the disk point .* was taken of \(disk id [0-9a-f]{32}, the point's [0-9a-f]{32}\); .*restore the point to a new OUT instead/,
    );
    expect((await backupErrorOf(restoreBackupOver(repo, p.point, sparse))).message).toMatch(/subformat monolithicSparse, the point's monolithicFlat/);
    expect(sha256(readFileSync(join(dir, 'o-flat.vmdk')))).toBe(before);
    const cli = await vmseal(['backup', 'restore', repo, p.point, '--over', other], noKey());
    expect(cli.code).toBe(2);
    expect(cli.stderr).toMatch(/restore the point to a new file instead/);
    // The disk is locked for the job: a holder of its lock (here a backup's shared one) keeps it out.
    const held = await acquireLock(disk, 'test', 'shared');
    try {
      expect((await backupErrorOf(restoreBackupOver(repo, p.point, disk))).code).toBe('ERR_DISK_BUSY');
    } finally {
      await held.release();
    }
    expect((await restoreBackupOver(repo, p.point, disk)).chunksWritten).toBe(0);
  });
});

describe('a flat disk without a change bitmap', () => {
  // Its chunks are hashed by the addon (hash-disk-chunks.ts); VMSEAL_BACKUP_NATIVE=0 takes the JS
  // thread's hash. Both must find the same chunks: one changed in part, one zeroed where the point
  // has data, one written where the point has a hole.
  for (const native of [true, false]) {
    it(`finds exactly the changed chunks and makes the extent the point's again (${native ? 'addon' : 'JS'} hashing)`, async () => {
      const dir = join(tmp.dir, native ? 'flat-native' : 'flat-js');
      mkdirSync(dir);
      const disk = await encryptedDisk(dir, 'd', 'monolithicFlat', 8 * MiB, [{ at: 0, data: patternBytes(6 * MiB, 31) }]);
      const extent = join(dir, 'd-flat.vmdk');
      const repo = join(dir, 'repo');
      await initRepository(repo);
      const p = await createBackup(disk, repo);
      const before = sha256(readFileSync(extent));
      const bytes = readFileSync(extent);
      bytes.fill(0x5a, 1 * MiB + 4096, 1 * MiB + 8192); // chunk 1: part of it changed
      bytes.fill(0, 3 * MiB, 4 * MiB); // chunk 3: zeros where the point has data
      bytes.fill(0xa5, 7 * MiB, 7 * MiB + 512); // chunk 7: data where the point has a hole
      writeFileSync(extent, bytes);
      rmSync(`${disk}.vmseal-ctk`, { force: true });
      const saved = process.env.VMSEAL_BACKUP_NATIVE;
      if (!native) process.env.VMSEAL_BACKUP_NATIVE = '0';
      try {
        const r = await restoreBackupOver(repo, p.point, disk);
        expect(r.chunksWritten).toBe(3);
        expect(r.chunksSame).toBe(5);
      } finally {
        if (saved === undefined) delete process.env.VMSEAL_BACKUP_NATIVE;
        else process.env.VMSEAL_BACKUP_NATIVE = saved;
      }
      expect(sha256(readFileSync(extent))).toBe(before);
    });
  }
});

describe('a flat disk of several native runs without a change bitmap', () => {
  // The addon hashes runs of 16 chunks; each chunk that differs is rewritten as soon as its run is
  // hashed, while the later runs are still being hashed (restore-over.ts rollChunks). Changes in
  // every run, the first and the last chunk included, all end up the point's.
  it('rewrites the chunks that differ in every run, and a failed rewrite stops the job, refused until resume finishes it', async () => {
    const dir = join(tmp.dir, 'flat-runs');
    mkdirSync(dir);
    const size = 40 * MiB; // runs of 16, 16 and 8 chunks
    const disk = await encryptedDisk(dir, 'd', 'monolithicFlat', size, [{ at: 0, data: patternBytes(size, 41) }]);
    const extent = join(dir, 'd-flat.vmdk');
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo);
    const before = readFileSync(extent);
    const changedChunks = [0, 5, 15, 16, 17, 31, 32, 39];
    const damage = (): void => {
      const bytes = Buffer.from(before);
      for (const c of changedChunks) bytes.fill(c + 1, c * MiB + 512, c * MiB + 1024);
      writeFileSync(extent, bytes);
      rmSync(`${disk}.vmseal-ctk`, { force: true });
    };
    damage();
    const r = await restoreBackupOver(repo, p.point, disk);
    expect(r.chunksWritten).toBe(changedChunks.length);
    expect(r.chunksSame).toBe(40 - changedChunks.length);
    expect(r.bytesWritten).toBe(changedChunks.length * MiB);
    expect(readFileSync(extent).equals(before)).toBe(true);

    // The point's copy of the last chunk is missing: its rewrite fails (ERR_BACKUP_CHUNK) and stops the
    // job, which stays journaled — the disk is refused until resume finishes it with the chunk back.
    damage();
    const m = JSON.parse(readFileSync(join(repo, 'points', `${p.point}.json`), 'utf8')) as { layers: Array<{ chunks: Array<[number, string]> }> };
    const lastHash = m.layers[0]!.chunks.find(([off]) => off === 39 * MiB)![1];
    const chunkFile = join(repo, 'chunks', lastHash.slice(0, 2), lastHash);
    const saved = readFileSync(chunkFile);
    rmSync(chunkFile);
    const err = await backupErrorOf(restoreBackupOver(repo, p.point, disk));
    expect(err.code).toBe('ERR_BACKUP_CHUNK');
    expect(err.message).toContain(lastHash);
    expect(existsSync(`${disk}.vmseal-journal`)).toBe(true);
    expect((await backupErrorOf(createBackup(disk, repo))).code).toBe('ERR_INTERRUPTED_JOB');
    writeFileSync(chunkFile, saved);
    const resumed = await resumeBackupRestore(disk);
    expect(resumed?.resumed).toBe(true);
    expect(existsSync(`${disk}.vmseal-journal`)).toBe(false);
    expect(readFileSync(extent).equals(before)).toBe(true);
  });
});
