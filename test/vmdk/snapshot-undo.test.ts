// The undo of a snapshot a crash cut short (src/vmdk/pending-snapshot.ts): the state it leaves —
// the parent read-only, the child under its temporary name beside it, not renamed into place — is
// made by taking a snapshot and renaming the child back. The undo runs only under the disk's
// exclusive lock, and never gives write bits back to a layer that has a finished child.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { existsSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, createSnapshot, openDisk, VmdkFormatError } from '../../src/vmdk/index.js';
import { acquireFileLock, lockRecordPathFor } from '../../src/util/lock.js';
import { MiB, tempDir } from './helpers.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => ({ dir, cleanup } = tempDir()));
afterEach(() => cleanup());

const writable = (path: string): boolean => (statSync(path).mode & 0o222) !== 0;

/** A base disk holding 0x5a in its first 64 KiB. */
async function base(): Promise<string> {
  const path = join(dir, 'vm.vmdk');
  const d = await createDisk(path, { capacity: 4 * MiB });
  await d.write(0, Buffer.alloc(65536, 0x5a));
  await d.close();
  return path;
}

/** The state a crash before the rename leaves: the base read-only, the child only under its temporary name. */
async function cutShort(path: string): Promise<string> {
  const child = await createSnapshot(path);
  const temp = join(dir, '.vm.vmdk.vmseal-snapshot');
  renameSync(child, temp);
  expect(writable(path)).toBe(false);
  return temp;
}

describe('undoing a snapshot cut short', () => {
  it('an open for writing makes the base writable again and removes the temporary child', async () => {
    const path = await base();
    const temp = await cutShort(path);
    const d = await openDisk(path);
    try {
      expect((await d.read(0, 65536)).equals(Buffer.alloc(65536, 0x5a))).toBe(true);
      await d.write(0, Buffer.alloc(512, 1));
    } finally {
      await d.close();
    }
    expect(writable(path)).toBe(true);
    expect(existsSync(temp)).toBe(false);
  });

  it('a new snapshot undoes it first and takes the first free name', async () => {
    const path = await base();
    const temp = await cutShort(path);
    const child = await createSnapshot(path);
    expect(child).toBe(join(dir, 'vm-000001.vmdk'));
    expect(existsSync(temp)).toBe(false);
    expect(writable(path)).toBe(false);
    await (await openDisk(child)).close();
  });

  it('is not done while another holds the disk lock (the snapshot may still be running)', async () => {
    const path = await base();
    const temp = await cutShort(path);
    // Another holder: a lock of this process not covering its opens conflicts like another process's.
    const other = await acquireFileLock(lockRecordPathFor(path), { mode: 'exclusive', coversOpens: false });
    try {
      await expect(openDisk(path)).rejects.toBeInstanceOf(VmdkFormatError);
      expect(writable(path)).toBe(false);
      expect(existsSync(temp)).toBe(true);
    } finally {
      other.release();
    }
    await (await openDisk(path)).close();
    expect(writable(path)).toBe(true);
    expect(existsSync(temp)).toBe(false);
  });

  it('a layer with a finished child stays read-only: a leftover of a second (sibling) snapshot is only removed', async () => {
    const path = await base();
    const first = await createSnapshot(path);
    const sibling = join(dir, '.vm.vmdk.vmseal-snapshot-sibling');
    writeFileSync(sibling, 'half written');
    await expect(openDisk(path)).rejects.toMatchObject({ code: 'ERR_VMDK_READ_ONLY' });
    expect(existsSync(sibling)).toBe(false);
    expect(writable(path)).toBe(false);
    // A second child of the read-only base: made aside under the sibling name, the base left read-only.
    writeFileSync(sibling, 'half written');
    const second = await createSnapshot(path, { name: 'second' });
    expect(existsSync(sibling)).toBe(false);
    expect(writable(path)).toBe(false);
    for (const top of [first, second]) await (await openDisk(top)).close();
  });

  it('a taken name is refused before anything changes', async () => {
    const path = await base();
    writeFileSync(join(dir, 'taken.vmdk'), 'someone else');
    await expect(createSnapshot(path, { name: 'taken' })).rejects.toMatchObject({ code: 'ERR_VMDK_EXISTS' });
    expect(writable(path)).toBe(true);
    expect(existsSync(join(dir, '.vm.vmdk.vmseal-snapshot'))).toBe(false);
  });
});
