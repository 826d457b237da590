// trackChanges: a program that writes a disk through the library keeps its change bitmap
// (`<disk>.vmseal-ctk`) as `vmseal serve` does. The next createBackup reads only the chunks written and
// its point restores the disk (checked by hash); a writer killed between writes leaves the file
// dirty and the next backup reads everything; untracked writes after a tracked session make the
// bitmap useless rather than wrong.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createBackup,
  createEncryptedSnapshot,
  initRepository,
  openDisk,
  openPlainDisk,
  restoreBackup,
  trackChanges,
  type CreateBackupResult,
} from '../../src/index.js';
import { readPoint } from '../../src/backup/points.js';
import { openRepository } from '../../src/backup/repository.js';
import { bundleFixture } from '../helpers/bundle.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, PASS, plainSha } from './helpers.js';

const MiB = 1 << 20;
const keys = { passphrase: PASS };
let tmp: ReturnType<typeof tempDir>;
let child: string;
beforeAll(async () => {
  tmp = tempDir('vmseal-track-');
  child = await bundleFixture(new URL('./fixtures/tracked-writer-child.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (child) rmSync(child, { force: true });
});

async function chunksOf(repoPath: string, point: string): Promise<Array<[number, string]>> {
  return (await readPoint(await openRepository(repoPath), point)).layers[0]!.chunks;
}

/** A new repository holding a first point of `disk` (whose bitmap is then a clean, empty baseline). */
async function firstPoint(disk: string, name: string): Promise<{ repo: string; first: CreateBackupResult }> {
  const repo = join(tmp.dir, `repo-${name}`);
  await initRepository(repo);
  return { repo, first: await createBackup(disk, repo) };
}

/** The point restores to a disk of the same plaintext (by hash). Leaves the disk's bitmap alone. */
async function expectRestoresDisk(disk: string, repo: string, point: string, name: string): Promise<void> {
  const out = join(tmp.dir, `restored-${name}.vmdk`);
  await restoreBackup(repo, point, out);
  expect(await plainSha(out)).toBe(await plainSha(disk));
}

/**
 * The point restores the disk and lists what a full read of the disk into a fresh repository lists
 * (that backup moves the disk's bitmap base to the fresh repository: call it last).
 */
async function expectPointIsDisk(disk: string, repo: string, point: string, name: string): Promise<void> {
  await expectRestoresDisk(disk, repo, point, name);
  const fresh = join(tmp.dir, `fresh-${name}`);
  await initRepository(fresh);
  const full = await createBackup(disk, fresh);
  expect(full.changeBitmap.used).toBe(false);
  expect(await chunksOf(repo, point)).toEqual(await chunksOf(fresh, full.point));
}

/** The state field of a bitmap file: 1 clean, 2 dirty. */
const stateOf = (disk: string): number => readFileSync(`${disk}.vmseal-ctk`).readUInt32LE(12);

describe('trackChanges', () => {
  it('a tracked library writer: the next backup reads only the chunks written, and its point is the disk', async () => {
    const disk = await encryptedDisk(tmp.dir, 'lib', 'monolithicSparse', 64 * MiB, [{ at: 0, data: Buffer.alloc(10 * MiB, 0x5a) }]);
    const { repo, first } = await firstPoint(disk, 'lib');
    expect(first.chunksRead).toBe(10);
    {
      await using d = trackChanges(await openDisk(disk, { keys }));
      expect(d.encrypted).toBe(true);
      // Chunk 3 (inside the old data), chunks 20 and 21 (one write across their boundary), chunk 40
      // (a partial data unit: read, patched, written back).
      await d.write(3 * MiB + 4096, Buffer.alloc(4096, 0x11));
      await d.write(21 * MiB - 65536, Buffer.alloc(131072, 0x12));
      await d.write(40 * MiB + 100, Buffer.alloc(7, 0x13));
      // Dirty from the first write on, until the disk is closed.
      expect(stateOf(disk)).toBe(2);
    }
    expect(stateOf(disk)).toBe(1);
    const second = await createBackup(disk, repo);
    expect(second.changeBitmap).toEqual({ used: true, base: first.point });
    expect(second.chunksRead).toBe(4);
    expect(second.chunks).toBe(13);
    await expectRestoresDisk(disk, repo, second.point, 'lib');

    // Two tracked sessions add up; a session that writes unit 0 (its data check changes too) and a
    // deallocation through the ciphertext view are marked like any write.
    const a = trackChanges(await openDisk(disk, { keys }));
    await a.write(0, Buffer.alloc(512, 0x21));
    await a.close();
    const b = trackChanges(await openPlainDisk(disk, { allowEncrypted: true }));
    expect((await b.deallocate(5 * MiB, MiB)).length).toBe(1);
    await b.close();
    const third = await createBackup(disk, repo);
    expect(third.changeBitmap).toEqual({ used: true, base: second.point });
    expect(third.chunksRead).toBe(2); // chunk 0, and chunk 5, a hole now (not stored)
    expect(third.chunks).toBe(12);
    await expectPointIsDisk(disk, repo, third.point, 'lib-2');
  });

  it('tracks the top of a snapshot chain (writes through the chain land in it)', async () => {
    const base = await encryptedDisk(tmp.dir, 'chain', 'monolithicSparse', 16 * MiB, [{ at: 0, data: Buffer.alloc(4 * MiB, 0x31) }]);
    const top = await createEncryptedSnapshot(base, { keys });
    {
      const d = await openDisk(top, { keys });
      await d.write(6 * MiB, Buffer.alloc(4096, 0x32));
      await d.close();
    }
    const repo = join(tmp.dir, 'repo-chain');
    await initRepository(repo);
    const first = await createBackup(top, repo);
    const d = trackChanges(await openDisk(top, { keys }));
    await d.write(MiB + 512, Buffer.alloc(512, 0x33)); // copy-on-write of a grain of the base's data
    await d.close();
    const second = await createBackup(top, repo);
    expect(second.changeBitmap).toEqual({ used: true, base: first.point });
    expect(second.chunksRead).toBe(1);
    expect(existsSync(`${base}.vmseal-ctk`)).toBe(false); // the read-only base is not tracked
  });

  it('a writer killed between writes leaves the bitmap dirty: the next backup reads everything and is right', async () => {
    const disk = await encryptedDisk(tmp.dir, 'kill', 'monolithicSparse', 32 * MiB, [{ at: 0, data: Buffer.alloc(6 * MiB, 0x41) }]);
    const { repo } = await firstPoint(disk, 'kill');
    const writer = spawn(process.execPath, [child, disk, PASS, `${MiB}:4096,${9 * MiB}:65536`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    writer.stderr.on('data', (d) => (err += String(d)));
    const exited = new Promise<NodeJS.Signals | null>((done) => writer.on('close', (_code, signal) => done(signal)));
    await new Promise<void>((written, fail) => {
      writer.stdout.on('data', (d) => {
        out += String(d);
        if (out.includes('written\n')) written();
      });
      void exited.then(() => fail(new Error(`the writer exited: ${err}`)));
    });
    writer.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    expect(stateOf(disk)).toBe(2);
    const after = await createBackup(disk, repo);
    expect(after.changeBitmap.used ? '' : after.changeBitmap.why).toMatch(/dirty/);
    expect(after.chunksRead).toBe(7); // chunks 0-5 and chunk 9, which the killed writer allocated
    await expectPointIsDisk(disk, repo, after.point, 'kill');
  });

  it('untracked writes after a tracked session make the bitmap unused, not wrong', async () => {
    const disk = await encryptedDisk(tmp.dir, 'mixed', 'monolithicFlat', 8 * MiB, [{ at: 0, data: Buffer.alloc(MiB, 0x51) }]);
    const { repo } = await firstPoint(disk, 'mixed');
    const tracked = trackChanges(await openDisk(disk, { keys }));
    await tracked.write(2 * MiB, Buffer.alloc(4096, 0x52));
    await tracked.close();
    expect(stateOf(disk)).toBe(1);
    const untracked = await openDisk(disk, { keys });
    await untracked.write(6 * MiB, Buffer.alloc(4096, 0x53));
    await untracked.close();
    const next = await createBackup(disk, repo);
    expect(next.changeBitmap.used ? '' : next.changeBitmap.why).toMatch(/another generation/);
    expect(next.chunksRead).toBe(8);
    await expectPointIsDisk(disk, repo, next.point, 'mixed');
  });

  it('leaves a disk opened read-only, a raw image and an unwritten disk alone; refuses what is not a disk', async () => {
    const disk = await encryptedDisk(tmp.dir, 'quiet', 'monolithicSparse', 4 * MiB, [{ at: 0, data: Buffer.alloc(MiB, 0x61) }]);
    const ro = await openDisk(disk, { keys, readOnly: true });
    expect(trackChanges(ro)).toBe(ro);
    await ro.close();
    const idle = trackChanges(await openDisk(disk, { keys }));
    expect(trackChanges(idle)).toBe(idle); // tracked once
    await idle.close();
    expect(existsSync(`${disk}.vmseal-ctk`)).toBe(false); // nothing written, nothing to record
    const raw = join(tmp.dir, 'quiet.raw');
    writeFileSync(raw, Buffer.alloc(MiB));
    const r = trackChanges(await openDisk(raw));
    await r.write(0, Buffer.alloc(512, 1));
    await r.close();
    expect(existsSync(`${raw}.vmseal-ctk`)).toBe(false);
    expect(statSync(raw).size).toBe(MiB);
    expect(() => trackChanges('disk.vmdk' as never)).toThrow(
      expect.objectContaining({
        code: 'ERR_INVALID_ARGUMENT',
        message: 'Expected a disk from openDisk or openPlainDisk for disk but received a string of length 9',
      }),
    );
    const closed = await openDisk(disk, { keys });
    await closed.close();
    expect(() => trackChanges(closed)).toThrow(expect.objectContaining({ code: 'ERR_VMDK_CLOSED' }));
  });
});
