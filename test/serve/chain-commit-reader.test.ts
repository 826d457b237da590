// An offline `vmseal snapshot commit` paused half-way (after its journal, during the copy, after the
// parent's final descriptor) while other processes try to read the chain: the `vmseal verify` of the
// child and of the parent, and the library's openDisk in this process. None may read a half-merged
// chain: each is refused (ERR_DISK_BUSY by the commit's locks, or ERR_INTERRUPTED_JOB by the
// journal or the parent's job line), or reads the parent whole — unchanged before the copy, merged
// after it. The commit then finishes and the parent holds the merged content.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedSnapshot, openDisk } from '../../src/index.js';
import { bundleFixture } from '../helpers/bundle.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, PASSPHRASE, plaintextOf } from './helpers.js';

const MiB = 1 << 20;
const CAPACITY = 8 * MiB;

let tmp: ReturnType<typeof tempDir>;
let fixture: string;
beforeAll(async () => {
  tmp = tempDir('vmseal-serve-commit-reader-');
  fixture = await bundleFixture(new URL('./fixtures/commit-pause.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (fixture) rmSync(fixture, { force: true });
});

/** What opening `path` in this process gives: its plaintext, or the error's code. */
async function readOrCode(path: string): Promise<Buffer | string> {
  return openDisk(path, { keys: KEYS, readOnly: true }).then(
    async (d) => {
      try {
        return await d.read(0, d.capacity);
      } finally {
        await d.close();
      }
    },
    (e: { code?: string }) => e.code ?? String(e),
  );
}

describe('readers of a chain during an offline snapshot commit', () => {
  it('are refused, or read the parent whole, at every pause; the commit then completes', async () => {
    for (const pauseAt of [1, 3, 6, 12]) {
      const dir = join(tmp.dir, String(pauseAt));
      mkdirSync(dir, { mode: 0o700 });
      const before = Buffer.alloc(CAPACITY);
      randomBytes(2 * MiB).copy(before);
      const base = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: CAPACITY, content: before });
      const child = await createEncryptedSnapshot(base, { keys: KEYS });
      const merged = Buffer.from(before);
      const d = await openDisk(child, { keys: KEYS });
      try {
        const data = randomBytes(3 * MiB);
        await d.write(MiB, data);
        data.copy(merged, MiB);
      } finally {
        await d.close();
      }

      const job = spawn(process.execPath, [fixture], {
        env: { ...process.env, CHILD: child, PASSPHRASE, PAUSE_AT: String(pauseAt) },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      job.stderr.on('data', (b) => (err += String(b)));
      const exit = new Promise<number | null>((done) => job.on('close', (code) => done(code)));
      const state = await new Promise<string>((done) => {
        job.stdout.on('data', (b) => {
          out += String(b);
          if (/^(paused|done)$/m.test(out)) done(/^paused$/m.test(out) ? 'paused' : 'done');
        });
        void exit.then(() => done('exited'));
      });
      const label = `paused at call ${pauseAt} of the commit`;
      expect(['paused', 'done'], `${label}: ${err}`).toContain(state);
      if (state === 'paused') {
        const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
        for (const path of [child, base]) {
          const got = await readOrCode(path);
          if (typeof got === 'string') expect(['ERR_DISK_BUSY', 'ERR_INTERRUPTED_JOB'], `${label}: open ${path}`).toContain(got);
          // The parent alone: as it was, or merged — never a mix.
          else expect(got.equals(before) || got.equals(merged), `${label}: content of ${path}`).toBe(true);
          // The CLI in another process: refused alike, or (the parent whole, as above) it reads it.
          const verified = await vmseal(['verify', path, '--recovery-passphrase'], env);
          if (typeof got === 'string') {
            expect(verified.code, `${label}: vmseal verify ${path} ran during the commit: ${verified.stdout}`).not.toBe(0);
            // (A child the commit has removed already: its journal is still there, or it is gone.)
            expect(verified.stderr, label).toMatch(existsSync(path) ? /ERR_DISK_BUSY|busy|locked by|interrupted/i : /interrupted|does not exist/);
          } else {
            expect(verified.code, `${label}: vmseal verify ${path}: ${verified.stderr}`).toBe(0);
          }
        }
        job.stdin.write('go\n');
      }
      expect(await exit, `${label}: ${err}`).toBe(0);
      expect((await plaintextOf(base)).equals(merged), label).toBe(true);
    }
  }, 120_000);
});
