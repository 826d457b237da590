// Simulated power loss during a snapshot commit (test/helpers/crash-fs.ts: every write not covered by
// a completed fsync of its file, every rename, link or unlink not followed by an fsync of its folder,
// is lost at the crash point). Unlike SIGKILL this fails a commit that forgets an fsync: afterwards the
// chain is either untouched or refused until resume, which finishes it with the chain's bytes.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { bundleFixture } from '../helpers/bundle.js';
import { tempDir } from '../disk/helpers.js';
import { scenarios } from './chain-scenarios.js';

let tmp: ReturnType<typeof tempDir>;
let child: string;
beforeAll(async () => {
  tmp = tempDir('vmseal-commit-crashfs-');
  child = await bundleFixture(new URL('./fixtures/commit-child.ts', import.meta.url));
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

function run(op: 'commit' | 'resume', disk: string, passphrase: string | undefined, crash?: { at: number; keep: 'none' | 'last' }) {
  const r = spawnSync(process.execPath, [child, op, disk], {
    env: {
      ...process.env,
      ...(passphrase ? { PASSPHRASE: passphrase } : {}),
      ...(crash ? { CRASH_ROOT: dirname(disk), CRASH_AT: String(crash.at), CRASH_KEEP: crash.keep } : {}),
    },
    encoding: 'utf8',
  });
  return { signal: r.signal, status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('simulated power loss at points of a snapshot commit, then resume', () => {
  for (const s of scenarios) {
    it(s.name, async () => {
      const tag = s.passphrase ? 'enc' : 'plain';
      const template = join(tmp.dir, `${tag}-template`);
      mkdirSync(template);
      const [, top] = await s.make(template);
      const expected = join(tmp.dir, `${tag}-expected.raw`);
      execFileSync('qemu-img', ['convert', '-O', 'raw', top, expected]);
      const copy = (name: string): [string, string] => {
        const dir = join(tmp.dir, name);
        cpSync(template, dir, { recursive: true });
        return [join(dir, 'vm.vmdk'), join(dir, top.slice(template.length + 1))];
      };
      const [, dryTop] = copy(`${tag}-dry`);
      const dry = run('commit', dryTop, s.passphrase, { at: 0, keep: 'none' });
      expect(dry.status, dry.stderr).toBe(0);
      const total = Number(/events=(\d+)/.exec(dry.stdout)![1]);
      // Un-synced writes all lost at mid-run; only the last of each file kept at the ends and between.
      const cases = [
        { keep: 'none' as const, at: Math.round(total / 2) },
        ...[1, Math.round(total / 3), Math.round((2 * total) / 3), total - 1].map((at) => ({ keep: 'last' as const, at })),
      ].filter((c) => c.at >= 1 && c.at < total);
      {
        for (const { keep, at } of cases) {
          const [p, t] = copy(`${tag}-${keep}-${at}`);
          const crashed = run('commit', t, s.passphrase, { at, keep });
          expect(crashed.signal, `crash at ${at} (${keep}): ${crashed.stderr}`).toBe('SIGKILL');
          const again = existsSync(`${t}.vmseal-journal`) ? run('resume', t, s.passphrase) : run('commit', t, s.passphrase);
          expect(again.status, `after a crash at ${at} (${keep}): ${again.stderr}`).toBe(0);
          expect(existsSync(t)).toBe(false);
          execFileSync('qemu-img', ['compare', '-q', p, expected]);
          expect(
            readdirSync(dirname(p)).filter((f) => /journal|\.tmp|vmseal-lock/.test(f)),
            `leftovers after a crash at ${at} (${keep})`,
          ).toEqual([]);
        }
      }
    });
  }
});
