// Every file a job writes or replaces is reserved by name, checked and committed as one; staging
// folders and journal temps of dead jobs are told apart by the kernel lock, not by a pid.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { encryptDisk, encryptInPlace, convertDisk, verifyDisk } from '../../src/pipeline/index.js';
import { createDisk } from '../../src/vmdk/index.js';
import { NameReservations } from '../../src/pipeline/lock.js';
import { cleanStaleStages } from '../../src/pipeline/staging.js';
import { Journal } from '../../src/pipeline/journal.js';
import { patternBytes, phraseLocker, tempDir } from '../disk/helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let input: string;

beforeAll(() => {
  tmp = tempDir('vmseal-outputs-');
  input = join(tmp.dir, 'input.raw');
  const image = Buffer.alloc(24 * MiB);
  patternBytes(24 * MiB, 7).copy(image, 0);
  writeFileSync(input, image);
});
afterAll(() => tmp.cleanup());

function folder(name: string): string {
  const dir = join(tmp.dir, name);
  mkdirSync(dir);
  return dir;
}

const keys = { passphrase: 'pw' };

describe('outputs that share a file name', () => {
  it('two concurrent encrypts, to x.vmdk (flat: x-flat.vmdk) and to x-flat.vmdk: one is refused, the other verifies', async () => {
    const dir = folder('clash');
    const flat = join(dir, 'x.vmdk');
    const sparse = join(dir, 'x-flat.vmdk');
    const [a, b] = await Promise.allSettled([
      encryptDisk(input, flat, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')], chunkSize: 1 * MiB, depth: 1 }),
      encryptDisk(input, sparse, { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')], chunkSize: 1 * MiB, depth: 1 }),
    ]);
    const results = [a, b];
    const failed = results.filter((r) => r.status === 'rejected');
    expect(failed).toHaveLength(1);
    const reason = (failed[0] as PromiseRejectedResult).reason as { code?: string; message?: string };
    expect(['ERR_DISK_BUSY', 'ERR_OUTPUT_EXISTS']).toContain(reason.code);
    expect(reason.message).toContain('x-flat.vmdk');
    // Whichever job won, its disk holds the input's data (and the loser left nothing of its own).
    const winner = a.status === 'fulfilled' ? flat : sparse;
    const v = await verifyDisk(winner, { keys, against: input });
    expect(v.problems).toEqual([]);
    expect(v.ok).toBe(true);
    if (a.status !== 'fulfilled') expect(existsSync(flat)).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(a.status === 'fulfilled' ? ['x-flat.vmdk', 'x.vmdk'] : ['x-flat.vmdk']);
  });

  it('a file the output needs, held by another job, fails the job before anything is written, even with force', async () => {
    const dir = folder('held');
    const out = join(dir, 'y.vmdk');
    const extent = join(dir, 'y-flat.vmdk');
    writeFileSync(extent, 'not yours');
    const other = new NameReservations();
    try {
      await other.reserve([extent], 'shared'); // another job reads it
      await expect(encryptDisk(input, out, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')], force: true })).rejects.toMatchObject({
        code: 'ERR_DISK_BUSY',
        message: expect.stringContaining('y-flat.vmdk'),
      });
    } finally {
      other.close();
    }
    expect(readFileSync(extent, 'utf8')).toBe('not yours');
    expect(readdirSync(dir)).toEqual(['y-flat.vmdk']);
  });

  it('without force, an existing extent name refuses the job before it starts (all or none)', async () => {
    const dir = folder('exists');
    const out = join(dir, 'z.vmdk');
    writeFileSync(join(dir, 'z-flat.vmdk'), 'keep');
    let progressed = false;
    await expect(
      encryptDisk(input, out, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')], onProgress: () => (progressed = true) }),
    ).rejects.toMatchObject({ code: 'ERR_OUTPUT_EXISTS', message: expect.stringContaining('z-flat.vmdk') });
    expect(progressed).toBe(false);
    expect(readdirSync(dir)).toEqual(['z-flat.vmdk']);
  });

  it('a missing output folder is named as such, not as a lock file', async () => {
    const out = join(tmp.dir, 'no-such-folder', 'o.vmdk');
    await expect(convertDisk(input, out, { subformat: 'monolithicSparse' })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: `cannot write ${out}: the folder ${join(tmp.dir, 'no-such-folder')} does not exist`,
    });
  });

  it('the lock file of the folder is gone once the last job ends', async () => {
    const dir = folder('tidy');
    await encryptDisk(input, join(dir, 't.vmdk'), { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
    expect(readdirSync(dir).sort()).toEqual(['t-flat.vmdk', 't.vmdk']);
  });
});

describe('in-place jobs hold the names of every file they rewrite', () => {
  it('a forced encrypt to the name of the flat extent of a disk being encrypted in place is refused (ERR_DISK_BUSY)', async () => {
    const dir = folder('in-place');
    const disk = join(dir, 'w.vmdk');
    const made = await createDisk(disk, { capacity: 8 * MiB, subformat: 'monolithicFlat' });
    await made.write(0, patternBytes(8 * MiB, 3));
    await made.close();
    const cli = join(import.meta.dirname, '..', '..', 'bin', 'vmseal.js');
    let other: ReturnType<typeof spawnSync> | undefined;
    await encryptInPlace(disk, {
      lockers: [phraseLocker('pw')],
      chunkSize: MiB,
      onProgress: () => {
        // Synchronous: the in-place job is stopped, with all its locks held, while the other job runs.
        other ??= spawnSync(process.execPath, [cli, '--json', 'convert', input, join(dir, 'w-flat.vmdk'), '--subformat', 'monolithicSparse', '--force'], {
          encoding: 'utf8',
          env: { ...process.env, VMSEAL_HOME: join(dir, 'home') },
        });
      },
    });
    expect(other).toBeDefined();
    expect(other!.status).toBe(7);
    expect(JSON.parse(String(other!.stdout)).error).toMatchObject({ code: 'ERR_DISK_BUSY', message: expect.stringContaining('w-flat.vmdk') });
    // The in-place job finished on its own files: the disk decrypts to what it held.
    const expected = join(tmp.dir, 'in-place-expected.raw');
    writeFileSync(expected, patternBytes(8 * MiB, 3));
    const v = await verifyDisk(disk, { keys, against: expected });
    expect(v.ok).toBe(true);
  });
});

describe('output kind from the subformat, never from the name', () => {
  it('a VMDK output named .img works, with a note, and reads back with format vmdk', async () => {
    const dir = folder('img-vmdk');
    const out = join(dir, 'disk.img');
    const r = await encryptDisk(input, out, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
    expect(r.notes?.join(' ')).toMatch(/is a VMDK \(monolithicFlat\).*--format vmdk/);
    expect(readdirSync(dir).sort()).toEqual(['disk-flat.vmdk', 'disk.img']);
    const v = await verifyDisk(out, { keys, format: 'vmdk', against: input });
    expect(v.ok).toBe(true);
  });

  it('a raw output named .vmdk is refused with the reason, and nothing is written', async () => {
    const dir = folder('raw-vmdk');
    await expect(convertDisk(input, join(dir, 'plain.vmdk'), { subformat: 'raw' })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: expect.stringContaining('guessing its format from guest-written content'),
    });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('format raw reads a file as raw whatever its first bytes say', async () => {
    const dir = folder('probe');
    // A "raw image" whose guest wrote a VMDK descriptor into its first sector, named without .raw/.img.
    const disk = join(dir, 'guest.bin');
    const img = Buffer.alloc(MiB);
    Buffer.from('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "input.raw" 0\n').copy(img);
    writeFileSync(disk, img);
    const guessed = await verifyDisk(disk).catch((e: unknown) => e);
    expect(guessed).not.toMatchObject({ ok: true, virtualSize: MiB });
    const told = await verifyDisk(disk, { format: 'raw' });
    expect(told).toMatchObject({ ok: true, virtualSize: MiB });
  });
});

describe('leftovers of dead jobs are found by the kernel lock, not by a pid', () => {
  it('a staging folder whose owner.json names a live pid but whose name nobody holds is removed', async () => {
    const dir = folder('stale-stage');
    // The pid of this very process: alive, so a pid test would keep the folder forever.
    const stage = join(dir, `.out.vmdk.vmseal-tmp-${process.pid}-deadbeef`);
    mkdirSync(stage);
    writeFileSync(join(stage, 'owner.json'), JSON.stringify({ pid: process.pid, host: hostname(), started: new Date().toISOString() }));
    writeFileSync(join(stage, 'out.vmdk'), 'half written');
    expect(await cleanStaleStages(dir, 'out.vmdk')).toEqual([stage]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a staging folder whose name a live job holds is kept', async () => {
    const dir = folder('live-stage');
    const stage = join(dir, `.out.vmdk.vmseal-tmp-1-cafef00d`); // pid 1 is not this job: the pid does not matter
    const owner = new NameReservations();
    try {
      await owner.reserve([stage], 'exclusive');
      mkdirSync(stage);
      expect(await cleanStaleStages(dir, 'out.vmdk')).toEqual([]);
      expect(existsSync(stage)).toBe(true);
    } finally {
      owner.close();
    }
    expect(await cleanStaleStages(dir, 'out.vmdk')).toEqual([stage]);
  });

  it('a journal temp file of a live pid that nobody holds is removed', async () => {
    const dir = folder('journal-temp');
    const disk = join(dir, 'd.vmdk');
    const temp = `${disk}.vmseal-journal.${process.pid}.tmp`;
    writeFileSync(temp, 'half a journal');
    expect(await Journal.open(disk)).toBeNull();
    expect(existsSync(temp)).toBe(false);
  });
});
