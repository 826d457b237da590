// The commit of a single-file output (monolithicSparse here) is one rename, with no commit record
// unless the job made a key (src/pipeline/staging.ts). Killed (SIGKILL) or crashed (simulated power
// loss) at any point, the output is complete under its name or absent, a staging folder left behind
// never holds a commit record, and running the same call again converts it afresh. A job that made
// a KEK still writes the record: a crash after the rename must never have the next job remove the
// key that locks the new disk.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { openDisk } from '../../src/disk/index.js';
import { LocalKeyProvider } from '../../src/keys/index.js';
import { patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { crashPoints } from '../helpers/points.js';
import { plainHash, rawInputs } from './helpers.js';

const MiB = 1 << 20;
const CHUNK = 128 * 1024;
let tmp: ReturnType<typeof tempDir>;
let killChild: string;
let crashChild: string;
let image: Buffer;

beforeAll(async () => {
  tmp = tempDir('vmseal-onefile-');
  killChild = await bundleFixture(new URL('./fixtures/inplace-child.ts', import.meta.url));
  crashChild = await bundleFixture(new URL('./fixtures/crash-child.ts', import.meta.url));
  image = Buffer.alloc(1 * MiB);
  patternBytes(400_000, 61).copy(image, 0);
  patternBytes(100_000, 62).copy(image, 768 * 1024);
  writeFileSync(join(tmp.dir, 'plain.raw'), image);
});
afterAll(() => {
  tmp.cleanup();
  rmSync(killChild, { force: true });
  rmSync(crashChild, { force: true });
});

type Run = { signal: NodeJS.Signals | null; status: number | null; stdout: string; stderr: string; events: number };

/** The job on `input` (op copy-one), killed at the `at`-th durability-relevant call when given. */
function run(how: 'kill' | 'crash', input: string, at = 0, env: Record<string, string> = {}): Run {
  const extra =
    how === 'kill' ? (at > 0 ? { KILL_AT: String(at) } : {}) : { CRASH_ROOT: dirname(input), CRASH_AT: String(at), CRASH_KEEP: env.CRASH_KEEP ?? 'none' };
  const r = spawnSync(process.execPath, [how === 'kill' ? killChild : crashChild, 'copy-one', input, String(CHUNK)], {
    env: { ...process.env, ...extra, ...env },
    encoding: 'utf8',
  });
  return { signal: r.signal, status: r.status, stdout: r.stdout, stderr: r.stderr, events: Number(/events=(\d+)/.exec(r.stdout)?.[1] ?? 0) };
}

/**
 * The last four durability-relevant calls of a short job (they hold the whole commit) and one spread
 * over the rest (test/helpers/points.ts; every call under `npm run fuzz`).
 */
function points(total: number, seed: number): number[] {
  return crashPoints(total, { first: 0, last: 4, spread: 1, seed });
}

/**
 * Killed at its point, or (the count of durability calls varies by one or two between runs: the
 * write-behind syncs as the data arrives) finished before it reached a point near the end.
 */
function expectKilled(r: Run, what: string): void {
  if (r.signal !== 'SIGKILL') expect(r.status, `${what}: neither killed nor finished: ${r.stderr}`).toBe(0);
}

/** Staging folders left in `dir`, and whether one holds a commit record. */
function stages(dir: string): { names: string[]; withRecord: string[] } {
  const names = readdirSync(dir).filter((f) => f.includes('.vmseal-tmp-'));
  return { names, withRecord: names.filter((n) => existsSync(join(dir, n, 'commit.json'))) };
}

async function providerHash(disk: string, home: string): Promise<string> {
  const d = await openDisk(disk, { keys: { providers: [new LocalKeyProvider({ home })] }, readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

describe('single-file output: one rename, no commit record', () => {
  for (const how of ['kill', 'crash'] as const)
    for (const keep of how === 'kill' ? ['-'] : ['none', 'last'])
      it(`${how === 'kill' ? 'SIGKILL' : `power loss (kept: ${keep})`} at any point: complete or absent, never rolled forward`, async () => {
        const input = rawInputs(join(tmp.dir, `${how}-${keep}`), join(tmp.dir, 'plain.raw'));
        const env: Record<string, string> = how === 'crash' ? { CRASH_KEEP: keep } : {};
        const dryInput = input('dry');
        const dry = run(how, dryInput, 0, env);
        expect(dry.status, dry.stderr).toBe(0);
        expect(stages(dirname(dryInput))).toEqual({ names: [], withRecord: [] });
        for (const point of points(dry.events, how.length + keep.length)) {
          const src = input(`at-${point}`);
          const dir = dirname(src);
          const out = join(dir, 'in.one.vmdk');
          const killed = run(how, src, point, env);
          expectKilled(killed, `${how} at ${point}`);
          expect(stages(dir).withRecord, `a commit record after a ${how} at ${point}`).toEqual([]);
          if (existsSync(out)) {
            expect(await plainHash(out, 'pw'), `output present after a ${how} at ${point}`).toBe(sha256(image));
          } else {
            // Nothing to roll forward: the same call converts it again and succeeds.
            const again = run(how, src, 0, env);
            expect(again.status, `re-run after a ${how} at ${point}: ${again.stderr}`).toBe(0);
            expect(await plainHash(out, 'pw')).toBe(sha256(image));
            expect(stages(dir).names, 'the re-run removed the dead staging folder').toEqual([]);
          }
          expect(sha256(readFileSync(src)), 'the input is never modified').toBe(sha256(image));
        }
      });

  it('with force over an existing output, a SIGKILL leaves the old output or the new one, never neither', async () => {
    const input = rawInputs(join(tmp.dir, 'force'), join(tmp.dir, 'plain.raw'));
    const first = input('dry');
    expect(run('kill', first, 0, { PHRASE: 'old' }).status).toBe(0);
    const dry = run('kill', first, 0, { FORCE: '1' });
    expect(dry.status, dry.stderr).toBe(0);
    expect(await plainHash(join(dirname(first), 'in.one.vmdk'), 'pw')).toBe(sha256(image));
    for (const point of points(dry.events, 2)) {
      const src = input(`at-${point}`);
      const out = join(dirname(src), 'in.one.vmdk');
      expect(run('kill', src, 0, { PHRASE: 'old' }).status).toBe(0);
      const killed = run('kill', src, point, { FORCE: '1' });
      expectKilled(killed, `kill at ${point}`);
      expect(existsSync(out), `the output exists after a kill at ${point}`).toBe(true);
      const opened = await Promise.all(['old', 'pw'].map((p) => plainHash(out, p).catch(() => null)));
      expect(
        opened.filter((h) => h !== null),
        `exactly one of the old and the new output after a kill at ${point}`,
      ).toEqual([sha256(image)]);
    }
  });

  it('a job that made a KEK keeps its commit record: a kill after the rename never costs the new disk its key', async () => {
    const input = rawInputs(join(tmp.dir, 'keys'), join(tmp.dir, 'plain.raw'));
    const dryInput = input('dry');
    const dryHome = join(dirname(dryInput), 'home');
    const dry = run('kill', dryInput, 0, { KEYSTORE: dryHome });
    expect(dry.status, dry.stderr).toBe(0);
    expect(await providerHash(join(dirname(dryInput), 'in.one.vmdk'), dryHome)).toBe(sha256(image));
    for (const point of points(dry.events, 3)) {
      const src = input(`at-${point}`);
      const dir = dirname(src);
      const home = join(dir, 'home');
      const out = join(dir, 'in.one.vmdk');
      const killed = run('kill', src, point, { KEYSTORE: home });
      expectKilled(killed, `kill at ${point}`);
      // The next job on the name cleans the dead one's staging folder (removing its key unless the commit had started).
      const again = run('kill', src, 0, { KEYSTORE: home });
      if (again.status !== 0) expect(again.stderr, `re-run after a kill at ${point}`).toContain('ERR_OUTPUT_EXISTS');
      expect(await providerHash(out, home), `the output opens with its key after a kill at ${point}`).toBe(sha256(image));
      expect(stages(dir).names).toEqual([]);
    }
  });
});
