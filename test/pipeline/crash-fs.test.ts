// Simulated power loss: the fault-injecting file layer (test/helpers/crash-fs.ts) drops, at a crash
// point, every write not covered by a completed fsync of its file and every rename or create not
// followed by an fsync of its folder. Unlike SIGKILL (which keeps the page cache), this fails a job
// that forgets an fsync. The in-place jobs, the commit of a new image and the journal run through it
// at many points; the same call afterwards must finish with the right data. The points: every
// call's kind first and last, the run's edges and a few spread between (test/helpers/points.ts; all
// of them under `npm run fuzz`); with un-synced writes kept ('last'), fewer spread ones.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { runCrashChild } from '../helpers/crash-run.js';
import { crashPoints } from '../helpers/points.js';
import { diskTemplate, encryptedDisks, opensAs, plainHash, rawInputs } from './helpers.js';

const MiB = 1 << 20;
const CHUNK = 128 * 1024;
let tmp: ReturnType<typeof tempDir>;
let child: string;
let image: Buffer;

beforeAll(async () => {
  tmp = tempDir('vmseal-crashfs-');
  child = await bundleFixture(new URL('./fixtures/crash-child.ts', import.meta.url));
  image = Buffer.alloc(1 * MiB);
  patternBytes(500_000, 51).copy(image, 0);
  patternBytes(100_000, 52).copy(image, 768 * 1024);
  writeFileSync(join(tmp.dir, 'plain.raw'), image);
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

// Each scenario runs twice: un-synced writes all lost, and only the last one of each file kept.
const KEEP = ['none', 'last'] as const;
let keep: (typeof KEEP)[number] = 'none';

function run(op: string, disk: string, crashAt = 0, env: Record<string, string> = {}) {
  return runCrashChild(child, [op, disk, String(CHUNK)], { root: dirname(disk), crashAt, keep, env });
}

describe('the fault-injecting file layer', () => {
  // 'selftest-sync' makes the same calls synchronously, as vmseal does on a memory-backed folder
  // (TMPDIR on tmpfs): the layer counts them alike and loses the same ones.
  let kindsOfAsync = '';
  it.each(['selftest', 'selftest-sync'])('keeps exactly what fsync of files and folders made durable (%s)', (op) => {
    const dir = join(tmp.dir, op);
    mkdirSync(dir);
    const selftest = (crashAt: number) =>
      spawnSync(process.execPath, [child, op, dir, '0'], { env: { ...process.env, CRASH_ROOT: dir, CRASH_AT: String(crashAt) }, encoding: 'utf8' });
    const dry = selftest(0);
    expect(dry.status, dry.stderr).toBe(0);
    const events = Number(/events=(\d+)/.exec(dry.stdout)![1]);
    const kinds = /kinds=(\w*)/.exec(dry.stdout)![1];
    if (op === 'selftest') kindsOfAsync = kinds;
    else expect(kinds).toBe(kindsOfAsync);
    expect(kinds).toBe('wwswsdwsrdwswsrf');
    rmSync(dir, { recursive: true });
    mkdirSync(dir);
    const crashed = selftest(events); // the last call: the write of e
    expect(crashed.signal, crashed.stderr).toBe('SIGKILL');
    const files = Object.fromEntries(
      readdirSync(dir)
        .sort()
        .map((f) => [f, readFileSync(join(dir, f), 'utf8')]),
    );
    expect(files).toEqual({ a: '', b: 'B', d: 'D', x: 'X1' });
  });
});

const inPlace = [
  { op: 'encrypt', subformat: 'monolithicSparse', passphrase: 'pw' },
  { op: 'rekey', subformat: 'monolithicFlat', passphrase: 'new' },
  { op: 'encrypt', subformat: 'monolithicFlat', passphrase: 'pw' },
] as const;

describe('power loss at any point of an in-place job, then the same call again', () => {
  for (const s of inPlace)
    for (const k of KEEP) {
      it(`${s.op} in place (${s.subformat}), un-synced writes kept: ${k}`, async () => {
        keep = k;
        const copyDisk = await diskTemplate(join(tmp.dir, `${s.op}-${s.subformat}-${k}`), join(tmp.dir, 'plain.raw'), s.op, s.subformat);
        const dry = run(s.op, copyDisk('dry'));
        expect(dry.status, dry.stderr).toBe(0);
        expect(dry.events).toBeGreaterThan(10);
        for (const point of crashPoints(dry.events, { spread: k === 'none' ? 3 : 1, kinds: dry.kinds, seed: 11 })) {
          const disk = copyDisk(`crash-${point}`);
          const crashed = run(s.op, disk, point);
          expect(crashed.signal, `crash at ${point}: ${crashed.stderr}`).toBe('SIGKILL');
          const again = run(s.op, disk);
          expect(again.status, `re-run after a crash at ${point}: ${again.stderr}`).toBe(0);
          expect(await plainHash(disk, s.passphrase), `data after a crash at ${point}`).toBe(sha256(image));
          expect(
            readdirSync(dirname(disk)).filter((f) => /journal|\.tmp/.test(f)),
            `leftovers after a crash at ${point}`,
          ).toEqual([]);
        }
      });
    }
});

describe('power loss at any point of a copy job and its commit', () => {
  for (const k of KEEP)
    it(`encrypt raw → twoGbMaxExtentFlat: the output is whole or absent, and the same call finishes it (kept: ${k})`, async () => {
      keep = k;
      const input = rawInputs(join(tmp.dir, `copy-${k}`), join(tmp.dir, 'plain.raw'));
      const dry = run('copy', input('dry'));
      expect(dry.status, dry.stderr).toBe(0);
      for (const point of crashPoints(dry.events, { spread: k === 'none' ? 3 : 1, kinds: dry.kinds, seed: 12 })) {
        const src = input(`crash-${point}`);
        const out = join(dirname(src), 'in.enc.vmdk');
        const crashed = run('copy', src, point);
        expect(crashed.signal, `crash at ${point}: ${crashed.stderr}`).toBe('SIGKILL');
        if (existsSync(out)) {
          expect(await plainHash(out, 'pw'), `output present after a crash at ${point}`).toBe(sha256(image));
        } else {
          const again = run('copy', src);
          if (again.status !== 0) expect(again.stderr, `re-run after a crash at ${point}`).toContain('ERR_OUTPUT_EXISTS');
          expect(await plainHash(out, 'pw'), `output after re-run, crash at ${point}`).toBe(sha256(image));
        }
        expect(sha256(readFileSync(src)), 'the input is never modified').toBe(sha256(image));
      }
    });
});

describe('power loss at any point of a shallow rekey (embedded descriptor), then resume', () => {
  for (const k of KEEP)
    it(`the disk opens with exactly one of the old and the new passphrase, data intact (kept: ${k})`, async () => {
      keep = k;
      const prepare = encryptedDisks(join(tmp.dir, `shallow-${k}`), join(tmp.dir, 'plain.raw'));
      const dry = run('shallow', await prepare('dry'));
      expect(dry.status, dry.stderr).toBe(0);
      for (const point of crashPoints(dry.events, { spread: 2, kinds: dry.kinds, seed: 13 })) {
        const disk = await prepare(`crash-${point}`);
        expect(run('shallow', disk, point).signal).toBe('SIGKILL');
        const resumed = run('resume', disk);
        expect(resumed.status, `resume after a crash at ${point}: ${resumed.stderr}`).toBe(0);
        const opens = opensAs(disk, image);
        const [withOld, withNew] = [await opens('old'), await opens('new')];
        expect(withOld !== withNew, `after a crash at ${point}: old opens ${withOld}, new opens ${withNew}`).toBe(true);
      }
    });
});
