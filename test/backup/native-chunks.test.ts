// The native data path of backups (native/backup_chunks.cc: storeChunks, restoreChunks), called
// directly and through createBackup/restoreBackup on flat disks: zero chunks are holes, chunks are
// stored once with the exact bytes, a short input stops the run, a failed system call is a typed
// error; a restore refuses a missing, resized or altered chunk before writing any of it and leaves
// zero blocks as holes; and a backup made natively lists the same chunks as one made through the
// VMDK layer (VMSEAL_BACKUP_NATIVE=0), chunks across two extents included.
import { execFileSync, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup, verifyBackup } from '../../src/backup/index.js';
import { createDisk } from '../../src/vmdk/index.js';
import { nativeBackup, nativeBackupError, STORE_NOT_REACHED, STORE_PRESENT, STORE_SHORT, STORE_WRITTEN, STORE_ZERO } from '../../src/util/native-backup.js';
import { tempDir } from '../disk/helpers.js';
import { BIN, cleanEnv } from '../cli/run-cli.js';
import { backupErrorOf, qemuRaw, run } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-native-');
});
afterAll(() => tmp.cleanup());

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function chunkRoot(dir: string): string {
  const root = join(dir, 'chunks');
  for (let i = 0; i < 256; i++) mkdirSync(join(root, i.toString(16).padStart(2, '0')), { recursive: true });
  return root;
}

/** Run `fn` with VMSEAL_BACKUP_NATIVE set to `value` (restored after). */
async function withNative<T>(value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const old = process.env.VMSEAL_BACKUP_NATIVE;
  if (value === undefined) delete process.env.VMSEAL_BACKUP_NATIVE;
  else process.env.VMSEAL_BACKUP_NATIVE = value;
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env.VMSEAL_BACKUP_NATIVE;
    else process.env.VMSEAL_BACKUP_NATIVE = old;
  }
}

describe('storeChunks', () => {
  it('skips zero chunks, writes new ones exactly (mode 0600, no temp left), finds present ones, stops at a short input', async () => {
    const native = nativeBackup();
    expect(native).not.toBeNull();
    const dir = join(tmp.dir, 'store');
    mkdirSync(dir);
    const root = chunkRoot(dir);
    const a = randomBytes(MiB);
    const tail = randomBytes(4096);
    const src = join(dir, 'src');
    writeFileSync(src, Buffer.concat([Buffer.alloc(MiB), a, a, tail]));
    const fd = openSync(src, 'r');
    try {
      const r = await native!.storeChunks(fd, [0, MiB, 2 * MiB, 3 * MiB], [MiB, MiB, MiB, 4096], root, [
        '.tmp-1-000000000001',
        '.tmp-1-000000000002',
        '.tmp-1-000000000003',
        '.tmp-1-000000000004',
      ]);
      expect(r.length).toBe(4 * 33);
      expect([r[0], r[33], r[66], r[99]]).toEqual([STORE_ZERO, STORE_WRITTEN, STORE_PRESENT, STORE_WRITTEN]);
      expect(r.toString('hex', 34, 66)).toBe(sha(a));
      expect(r.toString('hex', 67, 99)).toBe(sha(a));
      expect(r.toString('hex', 100, 132)).toBe(sha(tail));
      expect(r.subarray(1, 33).equals(Buffer.alloc(32))).toBe(true); // a hole has no hash
      const file = join(root, sha(a).slice(0, 2), sha(a));
      expect(readFileSync(file).equals(a)).toBe(true);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(readFileSync(join(root, sha(tail).slice(0, 2), sha(tail))).equals(tail)).toBe(true);
      const names = readdirSync(root).flatMap((f) => readdirSync(join(root, f)));
      expect(names.sort()).toEqual([sha(a), sha(tail)].sort()); // no temp file left

      // The input ends inside the second chunk: the run stops there, the rest is not reached.
      const short = await native!.storeChunks(fd, [MiB, 3 * MiB, 0], [MiB, MiB, MiB], root, [
        '.tmp-1-000000000005',
        '.tmp-1-000000000006',
        '.tmp-1-000000000007',
      ]);
      expect([short[0], short[33], short[66]]).toEqual([STORE_PRESENT, STORE_SHORT, STORE_NOT_REACHED]);
    } finally {
      closeSync(fd);
    }
  });

  it('rejects a failed system call with ERR_BACKUP_CHUNK_IO, errno and path, which callers see as the fs error', async () => {
    const native = nativeBackup()!;
    const dir = join(tmp.dir, 'store-fail');
    mkdirSync(dir);
    const root = chunkRoot(dir);
    const data = randomBytes(MiB);
    const fan = join(root, sha(data).slice(0, 2));
    rmSync(fan, { recursive: true });
    writeFileSync(fan, 'not a folder');
    const src = join(dir, 'src');
    writeFileSync(src, data);
    const fd = openSync(src, 'r');
    try {
      const err = await native.storeChunks(fd, [0], [MiB], root, ['.tmp-1-000000000001']).then(
        () => null,
        (e: unknown) => e as { code: string; errno: number; syscall: string; path: string },
      );
      expect(err).toMatchObject({ code: 'ERR_BACKUP_CHUNK_IO', syscall: 'open' });
      expect(err!.path).toBe(`${join(fan, sha(data))}.tmp-1-000000000001`);
      expect(nativeBackupError(err)).toMatchObject({ code: 'ENOTDIR', syscall: 'open', path: err!.path });
      // Bad arguments throw at once.
      expect(() => native.storeChunks(fd, [], [], root, [])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
      expect(() => native.storeChunks(fd, [0], [MiB], root, ['../x'])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_TYPE' }));
      expect(() => native.storeChunks(fd, [0, 1], [MiB], root, ['.a', '.b'])).toThrow(expect.objectContaining({ code: 'ERR_OUT_OF_RANGE' }));
    } finally {
      closeSync(fd);
    }
  });
});

describe('restoreChunks', () => {
  it('checks length and hash before writing, writes only non-zero blocks', async () => {
    const native = nativeBackup()!;
    const dir = join(tmp.dir, 'restore');
    mkdirSync(dir);
    // A chunk of data, a 64 KiB zero block, data again.
    const chunk = Buffer.concat([randomBytes(64 * 1024), Buffer.alloc(64 * 1024), randomBytes(MiB - 128 * 1024)]);
    const other = randomBytes(MiB);
    const good = join(dir, 'good');
    writeFileSync(good, chunk);
    const out = join(dir, 'out');
    writeFileSync(out, Buffer.alloc(0));
    const fd = openSync(out, 'r+');
    try {
      const ok = await native.restoreChunks(fd, [MiB], [MiB], [good], Buffer.from(sha(chunk), 'hex'), 64 * 1024);
      expect(ok).toMatchObject({ failed: -1, bytes: MiB - 64 * 1024 });
      const back = readFileSync(out);
      expect(back.length).toBe(2 * MiB);
      expect(back.subarray(MiB).equals(chunk)).toBe(true);
      expect(back.subarray(0, MiB).equals(Buffer.alloc(MiB))).toBe(true);

      const altered = join(dir, 'altered');
      const bad = Buffer.from(other);
      bad[7] ^= 1;
      writeFileSync(altered, bad);
      const longer = join(dir, 'longer');
      writeFileSync(longer, Buffer.concat([other, Buffer.alloc(1)]));
      const shorter = join(dir, 'shorter');
      writeFileSync(shorter, other.subarray(1));
      const h = Buffer.from(sha(other), 'hex');
      for (const [path, reason, size] of [
        [join(dir, 'missing'), 'missing', 0],
        [altered, 'hash', MiB],
        [longer, 'size', MiB + 1],
        [shorter, 'size', MiB - 1],
      ] as const) {
        // The good chunk first: it is written; the bad one stops the run before any of it is written.
        const r = await native.restoreChunks(fd, [2 * MiB, 3 * MiB], [MiB, MiB], [good, path], Buffer.concat([Buffer.from(sha(chunk), 'hex'), h]), 64 * 1024);
        expect(r).toMatchObject({ failed: 1, reason, size });
        expect(statSync(out).size).toBe(3 * MiB);
      }
    } finally {
      closeSync(fd);
    }
  });
});

describe('backups of flat disks through the native path', () => {
  it('list the same chunks as through the VMDK layer (holes, the short last chunk, chunks across extents) and restore exactly', async () => {
    const dir = join(tmp.dir, 'same');
    mkdirSync(dir);
    const capacity = 6 * MiB + 512 * 1024; // a last chunk of 512 KiB
    const path = join(dir, 'd.vmdk');
    // Extents of 1.5 MiB: every other chunk lies across two extent files (a plain disk: the VMDK
    // layer's createDisk takes the extent size; the data path does not care what the bytes are).
    const d = await createDisk(path, { capacity, subformat: 'twoGbMaxExtentFlat', maxExtentSize: 1536 * 1024 });
    try {
      await d.write(0, randomBytes(3 * MiB));
      await d.write(6 * MiB, randomBytes(512 * 1024));
    } finally {
      await d.close();
    }
    expect(readdirSync(dir).filter((f) => f.endsWith('.vmdk')).length).toBe(6); // the descriptor and 5 extents
    // A raw image of the same bytes, its zeros written (data to the file system, holes to a backup).
    const flat = await qemuRaw(path, join(dir, 'view.raw'));
    const holeDisk = join(dir, 'raw.img');
    writeFileSync(holeDisk, flat);

    for (const [disk, opts] of [
      [path, { allowPlain: true }],
      [holeDisk, { allowPlain: true, format: 'raw' as const }],
    ] as const) {
      const raw = 'format' in opts;
      const repoA = join(dir, `a-${raw ? 'raw' : 'vmdk'}`);
      const repoB = join(dir, `b-${raw ? 'raw' : 'vmdk'}`);
      await initRepository(repoA);
      await initRepository(repoB);
      const viaNative = await withNative(undefined, () => createBackup(disk, repoA, opts));
      const viaLayer = await withNative('0', () => createBackup(disk, repoB, opts));
      const chunksOf = (repo: string, point: string): unknown => JSON.parse(readFileSync(join(repo, 'points', `${point}.json`), 'utf8')).layers[0].chunks;
      expect(chunksOf(repoA, viaNative.point)).toEqual(chunksOf(repoB, viaLayer.point));
      expect({ ...viaNative, point: '', changeBitmap: null }).toEqual({ ...viaLayer, point: '', changeBitmap: null });
      expect(viaNative.chunks).toBe(4); // chunks 3 to 5 are zeros: holes
      expect((await verifyBackup(repoA)).problems).toEqual([]);

      const out = join(dir, `out-${raw ? 'raw' : 'vmdk'}`);
      mkdirSync(out);
      const restored = await restoreBackup(repoA, viaNative.point, join(out, raw ? 'r.img' : 'r.vmdk'));
      if (raw) {
        expect(readFileSync(restored.path).equals(readFileSync(holeDisk))).toBe(true);
        // The zero chunks and zero blocks are holes in the restored file.
        const blocks = Number((await run('stat', ['-c', '%b', restored.path])).trim());
        expect(blocks * 512).toBeLessThan(capacity - 2 * MiB + 64 * 1024);
      } else {
        expect((await qemuRaw(restored.path, join(dir, 'r.raw'))).equals(flat)).toBe(true);
      }
    }
  });

  it('a restore refuses an altered chunk of a flat point before OUT exists', async () => {
    const dir = join(tmp.dir, 'altered');
    mkdirSync(dir);
    const disk = join(dir, 'd.img');
    writeFileSync(disk, randomBytes(4 * MiB));
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo, { allowPlain: true, format: 'raw' });
    const m = JSON.parse(readFileSync(join(repo, 'points', `${p.point}.json`), 'utf8'));
    const hash = m.layers[0].chunks[2][1] as string;
    const file = join(repo, 'chunks', hash.slice(0, 2), hash);
    const bad = readFileSync(file);
    bad[0] ^= 1;
    writeFileSync(file, bad);
    const err = await backupErrorOf(restoreBackup(repo, p.point, join(dir, 'out.img')));
    expect(err.code).toBe('ERR_BACKUP_CHUNK');
    expect(err.message).toContain(`chunk ${hash} does not hash to its name`);
    expect(readdirSync(dir).sort()).toEqual(['d.img', 'repo']);
    writeFileSync(file, bad.subarray(1));
    expect((await backupErrorOf(restoreBackup(repo, p.point, join(dir, 'out.img')))).message).toContain(`has ${MiB - 1} bytes where ${MiB} are expected`);
    rmSync(file);
    expect((await backupErrorOf(restoreBackup(repo, p.point, join(dir, 'out.img')))).message).toContain(`chunk ${hash} is missing`);
    // A FIFO at the chunk's name: refused, not waited on (the open would block for a writer), on both paths.
    execFileSync('mkfifo', [file]);
    for (const native of [undefined, '0'] as const) {
      const e = await withNative(native, () => backupErrorOf(restoreBackup(repo, p.point, join(dir, 'out.img'))));
      expect(e.message).toContain(`chunk ${hash} is not a regular file`);
    }
    expect(existsSync(join(dir, 'out.img'))).toBe(false);
  });

  it('a chunk write that fails (file size limit: EFBIG) fails the CLI backup with the errno, no manifest, nothing left', async () => {
    const dir = join(tmp.dir, 'efbig');
    mkdirSync(dir);
    const disk = join(dir, 'd.img');
    writeFileSync(disk, randomBytes(4 * MiB));
    const repo = join(dir, 'repo');
    await initRepository(repo);
    // Files may not grow past 512 KiB: every chunk file's write fails (node ignores SIGXFSZ).
    const r = await new Promise<{ code: number | null; stderr: string }>((resolve) => {
      const child = spawn('prlimit', ['--fsize=524288', process.execPath, BIN, 'backup', 'create', '--allow-plain', '--format', 'raw', disk, repo], {
        env: cleanEnv(),
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      child.on('close', (code) => resolve({ code, stderr }));
    });
    expect(r.code).toBe(1);
    // The file it failed on, why, and what to do.
    expect(r.stderr).toMatch(/file too large: \S+\/repo\/chunks\/[0-9a-f]{2}\/[0-9a-f]{64}\.tmp-\d+-[0-9a-f]{12}/);
    expect(r.stderr).toMatch(/file-size limit \(ulimit -f\)/);
    expect(readdirSync(join(repo, 'points'))).toEqual([]);
    const left = readdirSync(join(repo, 'chunks')).flatMap((f) => readdirSync(join(repo, 'chunks', f)));
    expect(left).toEqual([]);
  });
});

describe('hashChunks', () => {
  it('hashes each chunk like storeChunks, marks zero chunks, stores nothing, and refuses bad runs', async () => {
    const native = nativeBackup()!;
    const file = join(tmp.dir, 'hash-only.bin');
    const data = Buffer.concat([randomBytes(1 << 20), Buffer.alloc(1 << 20), randomBytes(4096)]);
    writeFileSync(file, data);
    const fd = openSync(file, 'r');
    try {
      const r = await native.hashChunks!(fd, [0, 1 << 20, 2 << 20], [1 << 20, 1 << 20, 4096]);
      expect(r.length).toBe(3 * 33);
      expect(r[0]).toBe(STORE_PRESENT);
      expect(r.toString('hex', 1, 33)).toBe(
        createHash('sha256')
          .update(data.subarray(0, 1 << 20))
          .digest('hex'),
      );
      expect(r[33]).toBe(STORE_ZERO);
      expect(r[66]).toBe(STORE_PRESENT);
      expect(r.toString('hex', 67, 99)).toBe(
        createHash('sha256')
          .update(data.subarray(2 << 20))
          .digest('hex'),
      );
      // Past the file's end: the run stops there.
      const short = await native.hashChunks!(fd, [2 << 20, 3 << 20], [1 << 20, 1 << 20]);
      expect([short[0], short[33]]).toEqual([STORE_SHORT, STORE_NOT_REACHED]);
      expect(() => native.hashChunks!(fd, [0], [1, 1])).toThrow(/as many entries/);
      expect(() => native.hashChunks!(fd, [], [])).toThrow(/1 to/);
    } finally {
      closeSync(fd);
    }
    expect(readdirSync(tmp.dir).filter((n) => n.startsWith('hash-only'))).toEqual(['hash-only.bin']);
  });
});
