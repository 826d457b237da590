// Kill a deep rekey of a snapshot chain with SIGKILL at points spread over its I/O: killed before its
// commit (the rename of the new base) the old chain stands, readable with the old key, and the next
// rekey starts over; killed after it, every layer is refused (ERR_INTERRUPTED_JOB) until resume of
// any layer finishes it. Either way each layer ends with its plaintext under the new key.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openDisk } from '../../src/disk/index.js';
import { resumeDisk } from '../../src/pipeline/index.js';
import { qemuChain } from './chain-scenarios.js';
import { cleanEnv, vmseal } from '../cli/run-cli.js';
import { bundleFixture } from '../helpers/bundle.js';
import { phraseLocker, sha256, tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
let child: string;
beforeAll(async () => {
  tmp = tempDir('vmseal-chain-deep-kill-');
  child = await bundleFixture(new URL('./fixtures/commit-child.ts', import.meta.url));
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

const NAMES = ['vm.vmdk', 'vm-000001.vmdk', 'vm-000002.vmdk'];

function run(op: 'deep' | 'resume', disk: string, killAt?: number) {
  const r = spawnSync(process.execPath, [child, op, disk], {
    env: { ...process.env, PASSPHRASE: 'old', NEW: 'new', ...(killAt ? { KILL_AT: String(killAt) } : {}) },
    encoding: 'utf8',
  });
  return { signal: r.signal, status: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function plainOf(path: string, passphrase: string): Promise<string> {
  const d = await openDisk(path, { readOnly: true, keys: { passphrase } });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

async function codeOf(path: string, passphrase: string): Promise<string | undefined> {
  return openDisk(path, { readOnly: true, keys: { passphrase } }).then(
    async (d) => {
      await d.close();
      return undefined;
    },
    (e: { code?: string }) => e.code,
  );
}

describe('SIGKILL during a deep rekey of a snapshot chain', () => {
  it('rolls back before its commit, is refused then resumed after it; plaintext kept either way', async () => {
    const template = join(tmp.dir, 'template');
    await qemuChain(template, [phraseLocker('old')], { passphrase: 'old' });
    const plain = await Promise.all(NAMES.map((n) => plainOf(join(template, n), 'old')));
    const copy = (name: string): string[] => {
      const dir = join(tmp.dir, name);
      cpSync(template, dir, { recursive: true });
      return NAMES.map((n) => join(dir, n));
    };

    const dry = copy('dry');
    const full = run('deep', dry[2]!);
    expect(full.status, full.stderr).toBe(0);
    const total = Number(/events=(\d+)/.exec(full.stdout)![1]);
    expect(total).toBeGreaterThan(20);

    // The last ~14 calls are the commit (rename of the base, fsync of the folder), the other renames and
    // an fsync, then each layer's final descriptor (write, fsync, fsync) and a last fsync of the folder:
    // kill in the build, just before the commit, while the layers move, and among the final descriptors.
    const points = new Set<number>([1, total - 16, total - 11, total - 4]);
    const env = cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home'), VMSEAL_PASSPHRASE: 'new' });
    let byCli = false;
    let committed = 0;
    let rolledBack = 0;
    let refusedAll = 0;
    for (const [n, point] of [...points].filter((p) => p >= 1 && p < total).entries()) {
      const layers = copy(`kill-${point}`);
      const killed = run('deep', layers[2]!, point);
      expect(killed.signal, `kill at ${point}: ${killed.stderr}`).toBe('SIGKILL');
      const stage = join(layers[0]!, '..', `.vm.vmdk.vmseal-chain-rekey`);
      if (existsSync(join(stage, 'journal')) && !existsSync(join(stage, 'vm.vmdk'))) {
        committed++;
        // Every layer refused until resume — except those whose final descriptor (written bottom up
        // at the very end) is in place already: they open with the new key, never with the old one.
        let refused = true;
        for (const l of layers) {
          const now = await codeOf(l, 'new');
          if (now !== 'ERR_INTERRUPTED_JOB') refused = false;
          expect(now === 'ERR_INTERRUPTED_JOB' || now === undefined, `${l} after kill at ${point} (new key): ${now}`).toBe(true);
          expect(await codeOf(l, 'old'), `${l} after kill at ${point} (old key)`).toBe(now ?? 'ERR_WRONG_KEY');
        }
        if (refused) refusedAll++;
        if (refused && !byCli) {
          // A changed journal is not acted on (its seal is keyed from the new DEK).
          const journal = join(stage, 'journal');
          const bytes = readFileSync(journal);
          const changed = Buffer.from(bytes);
          changed[changed.length - 1] ^= 1; // its seal
          writeFileSync(journal, changed);
          await expect(resumeDisk(layers[1]!, { keys: { passphrase: 'new' } })).rejects.toMatchObject({ code: 'ERR_JOURNAL' });
          writeFileSync(journal, bytes);
          // The CLI finishes it too (by the top's path; the new key as the recovery passphrase).
          byCli = true;
          const cli = await vmseal(['resume', layers[2]!, '--recovery-passphrase'], env);
          expect(cli.code, cli.stderr).toBe(0);
        } else {
          const again = run('resume', layers[n % 3]!); // any layer finishes it
          expect(again.status, `resume after kill at ${point}: ${again.stderr}`).toBe(0);
        }
      } else {
        rolledBack++;
        for (const [i, l] of layers.entries()) expect(await plainOf(l, 'old'), `${l} after kill at ${point}`).toBe(plain[i]);
        const again = run('deep', layers[n % 3]!);
        expect(again.status, `rekey again after kill at ${point}: ${again.stderr}`).toBe(0);
      }
      for (const [i, l] of layers.entries()) {
        expect(await plainOf(l, 'new'), `${l} after kill at ${point} and resume`).toBe(plain[i]);
        expect(await codeOf(l, 'old'), `old key on ${l}`).toBe('ERR_WRONG_KEY');
      }
      expect(readdirSync(join(layers[0]!, '..')).filter((f) => /vmseal-chain|journal|vmseal-tmp/.test(f))).toEqual([]);
    }
    expect(committed, 'kills after the commit').toBeGreaterThan(0);
    expect(rolledBack, 'kills before the commit').toBeGreaterThan(0);
    expect(refusedAll, 'kills while the layers move').toBeGreaterThan(0);

    expect(byCli, 'vmseal resume').toBe(true);
  });
});
