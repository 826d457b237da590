// Short writes: under a file-size limit (`ulimit -f`, RLIMIT_FSIZE) a write returns fewer bytes than
// asked before the next one fails with EFBIG. The in-place journal must never record as saved a chunk
// copy that was cut short: the job fails before touching the disk, and the same call without the limit
// finishes with the right data — also when the limited run was killed at any point.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { encryptInPlace } from '../../src/pipeline/index.js';
import { patternBytes, phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { diskTemplate, plainHash } from './helpers.js';

const KiB = 1024;
// One chunk covers the whole 512 KiB disk, so the journal's copy area (at 68 KiB) reaches past every
// offset the disk itself is written at: a limit of 560 KiB cuts the chunk copy short and nothing else.
const DISK = 512 * KiB;
const CHUNK = DISK;
const LIMIT_KIB = 560;
let tmp: ReturnType<typeof tempDir>;
let child: string;
let image: Buffer;
/** A fresh copy of the plain monolithicFlat disk in a new folder. */
let copyDisk: (to: string) => string;

beforeAll(async () => {
  tmp = tempDir('vmseal-short-');
  child = await bundleFixture(new URL('./fixtures/inplace-child.ts', import.meta.url));
  image = patternBytes(DISK, 31);
  writeFileSync(join(tmp.dir, 'plain.raw'), image);
  copyDisk = await diskTemplate(join(tmp.dir, 'orig'), join(tmp.dir, 'plain.raw'), 'encrypt', 'monolithicFlat', 'd.vmdk');
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

function run(disk: string, opts: { limitKiB?: number; killAt?: number } = {}) {
  const argv = [child, 'encrypt', disk, String(CHUNK)];
  const env = { ...process.env, ...(opts.killAt ? { KILL_AT: String(opts.killAt) } : {}) };
  const r = opts.limitKiB
    ? spawnSync('bash', ['-c', `ulimit -f ${opts.limitKiB} && exec "$0" "$@"`, process.execPath, ...argv], { env, encoding: 'utf8' })
    : spawnSync(process.execPath, argv, { env, encoding: 'utf8' });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

describe('in-place encryption under a file-size limit', () => {
  it('fails at the short chunk copy instead of going on, and the same call without the limit finishes', async () => {
    const disk = copyDisk('plain-run');
    const limited = run(disk, { limitKiB: LIMIT_KIB });
    expect(limited.status, `the limited run must fail: ${limited.stdout}${limited.stderr}`).not.toBe(0);
    // The message says that the disk is half done and how to finish it.
    expect(limited.stderr).toContain('ERR_NO_SPACE');
    expect(limited.stderr).toMatch(/ulimit -f/);
    expect(limited.stderr).toContain(`vmseal resume ${disk}`);
    const again = run(disk);
    expect(again.status, again.stderr).toBe(0);
    expect(await plainHash(disk, 'pw')).toBe(sha256(image));
    expect(readdirSync(dirname(disk)).filter((f) => /journal|\.tmp/.test(f))).toEqual([]);
  });

  it('killed at any point of a limited run, the same call without the limit finishes with the right data', async () => {
    // Count the I/O calls the limited run makes on the old and the new code alike: kill at each of
    // them and a few past the end (where a run that ignored the short write would still be going).
    const dry = run(copyDisk('count'), { limitKiB: LIMIT_KIB });
    const events = Number(/events=(\d+)/.exec(dry.stdout)?.[1] ?? 0) || 12;
    for (let point = 1; point <= Math.min(events + 4, 24); point++) {
      const disk = copyDisk(`kill-${point}`);
      run(disk, { limitKiB: LIMIT_KIB, killAt: point });
      const again = run(disk);
      expect(again.status, `re-run after a limited run killed at ${point}: ${again.stderr}`).toBe(0);
      expect(await plainHash(disk, 'pw'), `data after kill at ${point}`).toBe(sha256(image));
    }
  });
});

// A flat extent that is a sparse file: encrypting it in place fills its holes (ciphertext of zeros is
// not zeros). On a small file system (a 16 MiB tmpfs, mounted by the test: CI runs as root) the job
// must be refused before it starts, not run out of space half way.
const canMount = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = join(tmpdir(), `vmseal-mount-probe-${process.pid}`);
  mkdirSync(probe, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe]);
  if (r.status === 0) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return r.status === 0;
})();

describe.skipIf(!canMount)('in-place encryption of a flat disk with holes, on a small file system', () => {
  it('is refused up front with ERR_NO_SPACE naming the holes, and the disk is left as it was', async () => {
    const mnt = join(tmp.dir, 'small-fs');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', mnt]);
    try {
      const disk = join(mnt, 'holes.vmdk');
      execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', disk, '64M']);
      execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x5a 1M 1M', disk], { stdio: 'ignore' });
      const before = readFileSync(join(mnt, 'holes-flat.vmdk'));
      const err = await encryptInPlace(disk, { lockers: [phraseLocker('pw')], chunkSize: 1 << 20 }).then(
        () => null,
        (e: Error & { code?: string }) => e,
      );
      expect(err, 'the job must be refused').not.toBeNull();
      expect(err!.code).toBe('ERR_NO_SPACE');
      expect(err!.message).toMatch(/holes/);
      expect(readFileSync(join(mnt, 'holes-flat.vmdk')).equals(before), 'the extent is untouched').toBe(true);
      expect(readFileSync(disk, 'utf8')).not.toMatch(/encryption/);
      expect(readdirSync(mnt).sort()).toEqual(['holes-flat.vmdk', 'holes.vmdk']);
    } finally {
      execFileSync('umount', [mnt]);
    }
  });
});
