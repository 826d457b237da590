// A restore writes its chunks from several workers at once: what it reports is what it wrote (every
// worker's bytes counted), and a damaged or missing chunk is ERR_BACKUP_CHUNK, saying which.
import { randomBytes } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup } from '../../src/backup/index.js';
import { openRepository } from '../../src/backup/repository.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk } from './helpers.js';

const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-restore-report-');
});
afterAll(() => tmp.cleanup());

describe('restore report', () => {
  it('reports the bytes it wrote, and refuses an altered or missing chunk', async () => {
    // A flat encrypted disk: every block of its ciphertext view is non-zero (encrypted zeros are not zeros).
    const disk = await encryptedDisk(tmp.dir, 'flat', 'monolithicFlat', 12 * MiB, [{ at: MiB, data: randomBytes(3 * MiB) }]);
    const repoPath = join(tmp.dir, 'repo');
    await initRepository(repoPath);
    const point = await createBackup(disk, repoPath);
    expect(point.chunks).toBe(12);
    mkdirSync(join(tmp.dir, 'out'));
    const r = await restoreBackup(repoPath, point.point, join(tmp.dir, 'out', 'a.vmdk'));
    expect(r).toMatchObject({ chunks: 12, bytesWritten: 12 * MiB });

    const repo = await openRepository(repoPath);
    const { hashes } = await repo.scanChunks();
    writeFileSync(repo.chunkPath(hashes[3]!), randomBytes(MiB));
    await expect(restoreBackup(repoPath, point.point, join(tmp.dir, 'out', 'b.vmdk'))).rejects.toMatchObject({
      code: 'ERR_BACKUP_CHUNK',
      message: expect.stringContaining(`chunk ${hashes[3]} does not hash to its name`),
    });
    writeFileSync(repo.chunkPath(hashes[3]!), randomBytes(MiB - 512));
    await expect(restoreBackup(repoPath, point.point, join(tmp.dir, 'out', 'c.vmdk'))).rejects.toMatchObject({
      code: 'ERR_BACKUP_CHUNK',
      message: expect.stringContaining(`has ${MiB - 512} bytes where ${MiB} are expected`),
    });
    rmSync(repo.chunkPath(hashes[3]!));
    await expect(restoreBackup(repoPath, point.point, join(tmp.dir, 'out', 'd.vmdk'))).rejects.toMatchObject({
      code: 'ERR_BACKUP_CHUNK',
      message: expect.stringContaining(`chunk ${hashes[3]} is missing from`),
    });
  });
});
