// A backup taken after a restore continues the restored disk's history from the point it was
// restored from (not from the newest point of the history, which the original disk may have made
// since), and only changed chunks are stored.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup } from '../../src/backup/index.js';
import { openDisk } from '../../src/disk/index.js';
import { openDisk as openStored } from '../../src/vmdk/index.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { encryptedDisk, PASS } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-history-');
});
afterAll(() => tmp.cleanup());

async function writeAt(path: string, at: number, data: Buffer): Promise<void> {
  const d = await openDisk(path, { keys: { passphrase: PASS } });
  try {
    await d.write(at, data);
  } finally {
    await d.close();
  }
}

async function line(path: string, key: string): Promise<string | undefined> {
  const d = await openStored(path, { readOnly: true, allowEncrypted: true });
  try {
    return d.descriptor!.get(key);
  } finally {
    await d.close();
  }
}

describe('backups after a restore', () => {
  it('continue from the point restored, in its history; the original disk keeps its own line of points', async () => {
    const dir = join(tmp.dir, 'lineage');
    mkdirSync(dir);
    const disk = await encryptedDisk(dir, 'd', 'monolithicSparse', 8 * MiB, [{ at: 0, data: patternBytes(3 * MiB, 51) }]);
    const repo = join(dir, 'repo');
    const { id: repoId } = await initRepository(repo);
    const p1 = await createBackup(disk, repo, { name: 'p1' });
    await writeAt(disk, 5 * MiB, patternBytes(MiB, 52));
    const p2 = await createBackup(disk, repo);
    expect(p2.parent).toBe(p1.point);

    // Restore p1 elsewhere: the restored disk names the point it came from.
    const out = join(dir, 'restored.vmdk');
    await restoreBackup(repo, 'p1', out);
    expect(await line(out, 'ddb.vmseal.restoredFrom')).toMatch(new RegExp(`^${repoId}:${p1.point}:[0-9a-f]{12}$`));
    execFileSync('qemu-img', ['info', out], { stdio: 'ignore' }); // the line does not bother qemu-img

    const p3 = await createBackup(out, repo);
    expect(p3).toMatchObject({ history: p1.history, parent: p1.point, newChunks: 0 }); // nothing changed since p1
    await writeAt(out, 7 * MiB, patternBytes(MiB, 53));
    const p4 = await createBackup(out, repo);
    expect(p4).toMatchObject({ history: p1.history, parent: p3.point, newChunks: 1 });
    // The original disk's next point follows p2, not the restored copy's points.
    const p5 = await createBackup(disk, repo);
    expect(p5.parent).toBe(p2.point);

    // A second restore of the same point is another line of points.
    const other = join(dir, 'other.vmdk');
    await restoreBackup(repo, p1.point, other);
    expect(await line(other, 'ddb.vmseal.restoredFrom')).not.toBe(await line(out, 'ddb.vmseal.restoredFrom'));
    expect((await createBackup(other, repo)).parent).toBe(p1.point);
  });
});
