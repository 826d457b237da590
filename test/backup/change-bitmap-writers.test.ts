// Every writer the library offers, run on a disk whose change bitmap (`<disk>.vmseal-ctk`) is clean
// and valid (a backup just made it its baseline), without change tracking: the next `createBackup`
// must not trust that bitmap (it would miss the writer's chunks: a backup that silently lacks data),
// so it reads everything, and its point equals a full read's in a fresh repository.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import {
  commitSnapshot,
  createBackup,
  createDisk,
  createEncryptedSnapshot,
  deepRekey,
  encryptInPlace,
  initRepository,
  openDisk,
  openPlainDisk,
  resealDataCheck,
  restoreBackupOver,
  revertEncryptedSnapshot,
  shallowRekey,
} from '../../src/index.js';
import { readPoint } from '../../src/backup/points.js';
import { openRepository } from '../../src/backup/repository.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { encryptedDisk, PASS } from './helpers.js';

const MiB = 1 << 20;
const keys = { passphrase: PASS };
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-ctk-writers-');
});
afterAll(() => tmp?.cleanup());

async function chunksOf(repoPath: string, point: string): Promise<Array<[number, string]>> {
  return (await readPoint(await openRepository(repoPath), point)).layers[0]!.chunks;
}

/** A repository with a first point of `disk`: the disk's bitmap is then clean, valid and empty. */
async function baseline(disk: string, name: string, allowPlain = false): Promise<string> {
  const repo = join(tmp.dir, `repo-${name}`);
  await initRepository(repo);
  await createBackup(disk, repo, { allowPlain });
  const again = await createBackup(disk, repo, { allowPlain });
  expect(again.changeBitmap.used).toBe(true); // the bitmap is trusted before the writer runs
  expect(again.chunksRead).toBe(0);
  return repo;
}

/** The next backup ignores the bitmap, reads every allocated chunk, and stores what a full read stores. */
async function expectFullRead(disk: string, repo: string, name: string, allowPlain = false): Promise<void> {
  const next = await createBackup(disk, repo, { allowPlain });
  expect(next.changeBitmap.used ? `used, base ${next.changeBitmap.base}` : '').toBe('');
  const fresh = join(tmp.dir, `fresh-${name}`);
  await initRepository(fresh);
  const full = await createBackup(disk, fresh, { allowPlain });
  expect(next.chunksRead).toBe(full.chunksRead);
  expect(await chunksOf(repo, next.point)).toEqual(await chunksOf(fresh, full.point));
}

describe('library writers invalidate a clean change bitmap', () => {
  it('openDisk: a write to an encrypted disk (decrypting view)', async () => {
    const disk = await encryptedDisk(tmp.dir, 'open-enc', 'monolithicSparse', 16 * MiB, [{ at: 0, data: Buffer.alloc(3 * MiB, 0x31) }]);
    const repo = await baseline(disk, 'open-enc');
    const d = await openDisk(disk, { keys });
    await d.write(9 * MiB, Buffer.alloc(4096, 0x32));
    await d.close();
    await expectFullRead(disk, repo, 'open-enc');
  });

  it('openDisk: a write to unit 0 of an encrypted flat disk (data check updated)', async () => {
    const disk = await encryptedDisk(tmp.dir, 'open-unit0', 'monolithicFlat', 4 * MiB, [{ at: 0, data: Buffer.alloc(MiB, 0x41) }]);
    const repo = await baseline(disk, 'open-unit0');
    const d = await openDisk(disk, { keys });
    await d.write(0, Buffer.alloc(512, 0x42));
    await d.close();
    await expectFullRead(disk, repo, 'open-unit0');
  });

  it('openPlainDisk: a ciphertext write and a deallocation', async () => {
    const disk = await encryptedDisk(tmp.dir, 'raw-view', 'monolithicSparse', 16 * MiB, [{ at: 0, data: Buffer.alloc(4 * MiB, 0x51) }]);
    const repo = await baseline(disk, 'raw-view');
    const d = await openPlainDisk(disk, { allowEncrypted: true });
    await d.write(2 * MiB, Buffer.alloc(4096, 0x52));
    await d.close();
    await expectFullRead(disk, repo, 'raw-view');
    await createBackup(disk, repo); // a new valid baseline
    const z = await openPlainDisk(disk, { allowEncrypted: true });
    expect((await z.deallocate(3 * MiB, MiB)).length).toBe(1);
    await z.close();
    await expectFullRead(disk, repo, 'raw-view-dealloc');
  });

  it('openDisk: a write to a plain VMDK (plain points)', async () => {
    const disk = join(tmp.dir, 'plain.vmdk');
    const made = await createDisk(disk, { capacity: 8 * MiB, subformat: 'monolithicFlat' });
    await made.write(0, Buffer.alloc(MiB, 0x61));
    await made.close();
    const repo = await baseline(disk, 'plain', true);
    const d = await openDisk(disk);
    await d.write(5 * MiB, Buffer.alloc(512, 0x62));
    await d.close();
    await expectFullRead(disk, repo, 'plain', true);
  });

  it('encryptInPlace of a plain disk with plain points', async () => {
    const disk = join(tmp.dir, 'inplace.vmdk');
    const made = await createDisk(disk, { capacity: 8 * MiB, subformat: 'monolithicSparse' });
    await made.write(MiB, Buffer.alloc(MiB, 0x71));
    await made.close();
    const repo = await baseline(disk, 'inplace', true);
    await encryptInPlace(disk, { lockers: [phraseLocker(PASS)] });
    await expectFullRead(disk, repo, 'inplace');
  });

  it('shallow and deep rekey', async () => {
    const disk = await encryptedDisk(tmp.dir, 'rekey', 'monolithicSparse', 8 * MiB, [{ at: 0, data: Buffer.alloc(2 * MiB, 0x81) }]);
    const repo = await baseline(disk, 'rekey');
    await shallowRekey(disk, { keys, lockers: [phraseLocker('other')] });
    await expectFullRead(disk, repo, 'shallow');
    await createBackup(disk, repo);
    await deepRekey(disk, { keys: { passphrase: 'other' }, lockers: [phraseLocker(PASS)] });
    await expectFullRead(disk, repo, 'deep');
  });

  it('a rollback (restoreBackupOver) to an older point', async () => {
    const disk = await encryptedDisk(tmp.dir, 'rollback', 'monolithicSparse', 8 * MiB, [{ at: 0, data: Buffer.alloc(2 * MiB, 0x91) }]);
    const repo = join(tmp.dir, 'repo-rollback');
    await initRepository(repo);
    const old = await createBackup(disk, repo);
    const d = await openDisk(disk, { keys });
    await d.write(MiB, Buffer.alloc(4096, 0x92));
    await d.close();
    await createBackup(disk, repo); // the bitmap now counts from this newer point
    expect((await createBackup(disk, repo)).changeBitmap.used).toBe(true);
    const r = await restoreBackupOver(repo, old.point, disk);
    expect(r.chunksWritten).toBe(1);
    await expectFullRead(disk, repo, 'rollback');
  });

  it('a snapshot commit into a base with a valid bitmap', async () => {
    const disk = await encryptedDisk(tmp.dir, 'commit', 'monolithicSparse', 8 * MiB, [{ at: 0, data: Buffer.alloc(2 * MiB, 0xa1) }]);
    const repo = await baseline(disk, 'commit');
    const top = await createEncryptedSnapshot(disk, { keys });
    const child = await openDisk(top, { keys });
    await child.write(5 * MiB, Buffer.alloc(4096, 0xa2));
    await child.close();
    await commitSnapshot(top, { keys });
    await expectFullRead(disk, repo, 'commit');
  });

  it('a snapshot revert of a top with a valid bitmap', async () => {
    const disk = await encryptedDisk(tmp.dir, 'revert', 'monolithicSparse', 8 * MiB, [{ at: 0, data: Buffer.alloc(2 * MiB, 0xb1) }]);
    const top = await createEncryptedSnapshot(disk, { keys });
    const child = await openDisk(top, { keys });
    await child.write(5 * MiB, Buffer.alloc(4096, 0xb2));
    await child.close();
    const repo = await baseline(top, 'revert');
    await revertEncryptedSnapshot(top, { keys });
    await expectFullRead(top, repo, 'revert');
  });

  it('a data check resealed (resealDataCheck)', async () => {
    const disk = await encryptedDisk(tmp.dir, 'reseal', 'monolithicFlat', 4 * MiB, [{ at: 0, data: Buffer.alloc(MiB, 0xc1) }]);
    const repo = await baseline(disk, 'reseal');
    await resealDataCheck(disk, { keys });
    await expectFullRead(disk, repo, 'reseal');
  });
});
