// Kill an in-place job with SIGKILL at many points of its protocol; running the same call again must
// finish it with the right data every time. The points (test/helpers/points.ts): each kind of call's
// first and last, the run's edges and a few spread between; every call under `npm run fuzz`.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, readSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { crashPoints } from '../helpers/points.js';
import { diskTemplate, encryptedDisks, opensAs, plainHash, rawInputs } from './helpers.js';

const MiB = 1 << 20;
const CHUNK = 64 * 1024;
let tmp: ReturnType<typeof tempDir>;
let child: string;
let image: Buffer;

beforeAll(async () => {
  tmp = tempDir('vmseal-kill-');
  // Bundled inside the package (node_modules/.cache) so that the native addon is found from it.
  child = await bundleFixture(new URL('./fixtures/inplace-child.ts', import.meta.url));
  image = Buffer.alloc(2 * MiB);
  patternBytes(900_000, 21).copy(image, 0);
  patternBytes(200_000, 22).copy(image, 1536 * 1024);
  writeFileSync(join(tmp.dir, 'plain.raw'), image);
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

function run(op: string, disk: string, killAt?: number) {
  const r = spawnSync(process.execPath, [child, op, disk, String(CHUNK)], {
    env: { ...process.env, ...(killAt ? { KILL_AT: String(killAt) } : {}) },
    encoding: 'utf8',
  });
  return { signal: r.signal, status: r.status, stdout: r.stdout, stderr: r.stderr, kinds: /kinds=(\w*)/.exec(r.stdout)?.[1] ?? '' };
}

const scenarios = [
  { op: 'encrypt', subformat: 'monolithicSparse', passphrase: 'pw' },
  { op: 'rekey', subformat: 'monolithicFlat', passphrase: 'new' },
] as const;

describe('SIGKILL at any point of a copy job: nothing under the final name until it is complete', () => {
  it('encrypt raw → twoGbMaxExtentFlat', async () => {
    const input = rawInputs(join(tmp.dir, 'copy'), join(tmp.dir, 'plain.raw'));
    const full = run('copy', input('dry'));
    expect(full.status, full.stderr).toBe(0);
    const total = Number(/events=(\d+)/.exec(full.stdout)![1]);
    for (const point of crashPoints(total, { spread: 4, kinds: full.kinds, seed: 4242 })) {
      const src = input(`kill-${point}`);
      const out = join(dirname(src), 'in.enc.vmdk');
      const killed = run('copy', src, point);
      expect(killed.signal, `kill at ${point}: ${killed.stderr}`).toBe('SIGKILL');
      const { existsSync } = await import('node:fs');
      if (existsSync(out)) {
        // The descriptor is renamed last: if it is there, the output is whole.
        expect(await plainHash(out, 'pw'), `output after kill at ${point}`).toBe(sha256(image));
      } else {
        // The same call again: it either writes the output, or finds that the killed run's commit had
        // started and rolls it forward (then the output exists, complete, and the call says so).
        const again = run('copy', src);
        if (again.status !== 0) expect(again.stderr, `re-run after kill at ${point}`).toContain('ERR_OUTPUT_EXISTS');
        expect(await plainHash(out, 'pw')).toBe(sha256(image));
      }
      expect(sha256(readFileSync(src)), 'the input is never modified').toBe(sha256(image));
      expect(readdirSync(dirname(src)).sort(), `files after kill at ${point}`).toEqual(expect.arrayContaining(['in.raw', 'in.enc.vmdk', 'in.enc-f001.vmdk']));
    }
  });
});

describe('SIGKILL at any point of a shallow rekey (embedded descriptor), then resume', () => {
  it('the disk opens with exactly one of the old and the new passphrase, data intact', async () => {
    const prepare = encryptedDisks(join(tmp.dir, 'shallow'), join(tmp.dir, 'plain.raw'));
    const full = run('shallow', await prepare('dry'));
    expect(full.status, full.stderr).toBe(0);
    const total = Number(/events=(\d+)/.exec(full.stdout)![1]);
    for (const point of crashPoints(total, { spread: 3, kinds: full.kinds, seed: 777 })) {
      const disk = await prepare(`kill-${point}`);
      expect(run('shallow', disk, point).signal).toBe('SIGKILL');
      const resumed = run('resume', disk);
      expect(resumed.status, `resume after kill at ${point}: ${resumed.stderr}`).toBe(0);
      const opens = opensAs(disk, image);
      const [withOld, withNew] = [await opens('old'), await opens('new')];
      expect(withOld !== withNew, `after kill at ${point}: old opens ${withOld}, new opens ${withNew}`).toBe(true);
      expect(readdirSync(dirname(disk)).filter((f) => /journal|\.tmp$|\.lck$/.test(f))).toEqual([]);
    }
  });
});

describe('SIGKILL at any point of an in-place job, then the same call again', () => {
  for (const s of scenarios) {
    it(`${s.op} in place (${s.subformat})`, async () => {
      const copyDisk = await diskTemplate(join(tmp.dir, s.op), join(tmp.dir, 'plain.raw'), s.op, s.subformat);
      // A run without a kill counts the I/O calls of the whole job.
      const dry = copyDisk('dry');
      const full = run(s.op, dry);
      expect(full.status, full.stderr).toBe(0);
      const total = Number(/events=(\d+)/.exec(full.stdout)![1]);
      expect(total).toBeGreaterThan(20);
      expect(await plainHash(dry, s.passphrase)).toBe(sha256(image));

      for (const point of crashPoints(total, { spread: 5, kinds: full.kinds, seed: s.op.length * 7919 })) {
        const disk = copyDisk(`kill-${point}`);
        const killed = run(s.op, disk, point);
        expect(killed.signal, `kill at ${point}: ${killed.stderr}`).toBe('SIGKILL');
        const again = run(s.op, disk);
        expect(again.status, `re-run after kill at ${point}: ${again.stderr}`).toBe(0);
        expect(await plainHash(disk, s.passphrase), `data after kill at ${point}`).toBe(sha256(image));
        expect(
          readdirSync(dirname(disk)).filter((f) => /journal|\.tmp$|\.lck$/.test(f)),
          `leftovers after kill at ${point}`,
        ).toEqual([]);
      }
      if (s.subformat === 'monolithicSparse') {
        // A power loss can tear the rewrite of an embedded descriptor: garble its area after a kill
        // half way; the re-run must write it whole again and finish.
        for (const point of [Math.floor(total / 2), Math.floor(total * 0.9)]) {
          const disk = copyDisk(`torn-${point}`);
          expect(run(s.op, disk, point).signal).toBe('SIGKILL');
          expect(readdirSync(dirname(disk))).toContain('original.vmdk.vmseal-journal');
          const fd = openSync(disk, 'r+');
          const head = Buffer.alloc(512);
          readSync(fd, head, 0, 512, 0);
          const descOffset = Number(head.readBigUInt64LE(28)) * 512;
          writeSync(fd, Buffer.alloc(700, 'X'), 0, 700, descOffset + 300);
          closeSync(fd);
          const again = run(s.op, disk);
          expect(again.status, `re-run after a torn descriptor at ${point}: ${again.stderr}`).toBe(0);
          expect(await plainHash(disk, s.passphrase)).toBe(sha256(image));
        }
      }
    });
  }
});
