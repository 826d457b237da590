// The worker threads of `vmseal convert DIR OUTDIR --jobs N`: the built CLI runs two images at once
// on its main thread and the rest in worker threads (two images at once each, planLanes), the batch's one key session stays on the main thread (a
// passphrase-protected keystore is unlocked once, its passphrase file read once, counted with
// strace), and an image whose key the workers cannot get fails exactly as it does on the main
// thread, without stopping the others.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPyKmip } from '../helpers/pykmip.js';
import { BIN, cleanEnv, json, sha256File, vmseal, type CliResult } from './run-cli.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;

let dir: string;
let env: NodeJS.ProcessEnv;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A raw image of `size` bytes: `seed` repeated, so that every image differs. */
async function rawImage(path: string, size: number, seed: number): Promise<void> {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4096) b.writeUInt32LE((seed * 2654435761 + i) >>> 0, i);
  await writeFile(path, b);
}

/**
 * Run the CLI under `strace -f` (every thread) and return its result with the number of times
 * any thread opened `watched`.
 */
async function vmsealCountingOpens(args: string[], watched: string): Promise<CliResult & { opens: number }> {
  const log = join(dir, `strace-${Date.now()}-${Math.random().toString(36).slice(2)}.log`);
  let r: CliResult;
  try {
    const { stdout, stderr } = await execFileP('strace', ['-f', '-qq', '-e', 'trace=open,openat', '-o', log, process.execPath, BIN, ...args], {
      env,
      maxBuffer: 64 * MiB,
      timeout: 60_000,
    });
    r = { code: 0, signal: null, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; signal?: NodeJS.Signals; stdout?: string; stderr?: string };
    r = { code: typeof e.code === 'number' ? e.code : null, signal: e.signal ?? null, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
  const text = await readFile(log, 'utf8');
  await rm(log, { force: true });
  const opens = text.split('\n').filter((l) => l.includes(`"${watched}"`)).length;
  return { ...r, opens };
}

/** The `[i/n] …` summary lines without their timings. */
function summary(stdout: string): string[] {
  return stdout
    .split('\n')
    .filter((l) => /^\[\d+\/\d+\] /.test(l))
    .map((l) => l.replace(/\s+\d+(?:\.\d+)? (?:ms|s|min)\b.*$/, ''));
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-batch-workers-'));
  env = cleanEnv();
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('convert DIR OUTDIR --jobs N: worker threads', () => {
  it('converts in worker threads and the main thread, unlocking a passphrase keystore once per batch', async () => {
    const home = join(dir, 'pass-home');
    const passFile = join(dir, 'home-pass.txt');
    await writeFile(passFile, 'correct horse battery staple\n', { mode: 0o600 });
    const keyOpts = ['--home', home, '--home-passphrase-file', passFile];
    ok(await vmseal(['keys', 'init', '--with-passphrase', ...keyOpts], env));

    const inDir = join(dir, 'pass-in');
    await mkdir(inDir);
    const expected: Record<string, string> = {};
    for (let i = 0; i < 6; i++) {
      const path = join(inDir, `p${i}.img`);
      await rawImage(path, (1 + (i % 3)) * MiB, i + 1);
      expected[`p${i}.img`] = await sha256File(path);
    }

    const enc = await vmsealCountingOpens(
      ['convert', inDir, join(dir, 'pass-enc'), '--subformat', 'monolithicSparse', '--encrypt', '--jobs', '5', '--json', ...keyOpts],
      passFile,
    );
    ok(enc);
    // Five at once: two on the main thread, two in one worker, one in another.
    expect(json(enc)).toMatchObject({ ok: true, images: 6, converted: 6, jobs: 5, workers: 2 });
    expect(enc.opens).toBe(1);

    const dec = await vmsealCountingOpens(
      ['convert', join(dir, 'pass-enc'), join(dir, 'pass-plain'), '--subformat', 'raw', '--decrypt', '--jobs', '3', '--json', ...keyOpts],
      passFile,
    );
    ok(dec);
    expect(json(dec)).toMatchObject({ ok: true, images: 6, converted: 6, workers: 1 });
    expect(dec.opens).toBe(1);
    const got: Record<string, string> = {};
    for (const name of (await readdir(join(dir, 'pass-plain'))).sort()) got[name] = await sha256File(join(dir, 'pass-plain', name));
    expect(got).toEqual(expected);

    // One job, and two, run on the main thread alone.
    for (const jobs of [1, 2]) {
      const r = await vmseal(['convert', inDir, join(dir, `pass-main${jobs}`), '--subformat', 'monolithicSparse', '--jobs', String(jobs), '--json'], env);
      expect(json(ok(r))).toMatchObject({ ok: true, converted: 6, jobs, workers: 0 });
    }
  });

  it('fails an image whose key is missing as the main thread would, and converts the others', async () => {
    const homeA = join(dir, 'home-a');
    const homeB = join(dir, 'home-b');
    const plain = join(dir, 'mixed-plain');
    const encDir = join(dir, 'mixed-enc');
    await mkdir(plain);
    for (let i = 0; i < 5; i++) await rawImage(join(plain, `m${i}.img`), MiB, 40 + i);
    // m2 is encrypted under another keystore: home A cannot unlock it.
    ok(await vmseal(['convert', plain, encDir, '--subformat', 'monolithicSparse', '--encrypt', '--home', homeA], env));
    await rm(join(encDir, 'm2.vmdk'));
    ok(await vmseal(['convert', join(plain, 'm2.img'), join(encDir, 'm2.vmdk'), '--subformat', 'monolithicSparse', '--encrypt', '--home', homeB], env));

    const runs: Record<string, CliResult> = {};
    for (const jobs of ['1', '3']) {
      runs[jobs] = await vmseal(['convert', encDir, join(dir, `mixed-dec${jobs}`), '--subformat', 'raw', '--decrypt', '--jobs', jobs, '--home', homeA], env);
      expect(runs[jobs]!.code, runs[jobs]!.stderr).toBe(1);
      expect((await readdir(join(dir, `mixed-dec${jobs}`))).sort()).toEqual(['m0.img', 'm1.img', 'm3.img', 'm4.img']);
    }
    const lines = summary(runs['3']!.stdout.replaceAll('mixed-dec3', 'OUT'));
    expect(lines).toEqual(summary(runs['1']!.stdout.replaceAll('mixed-dec1', 'OUT')));
    expect(lines).toHaveLength(5);
    expect(lines[2]).toMatch(/^\[3\/5\] FAILED .*m2\.vmdk: .*\(ERR_[A-Z_]+\)$/);
    expect(runs['3']!.stdout).toMatch(/^4 of 5 images converted, 1 failed;/m);
    for (const i of [0, 1, 3, 4]) expect(await sha256File(join(dir, 'mixed-dec3', `m${i}.img`))).toBe(await sha256File(join(plain, `m${i}.img`)));
  });

  it('fetches the batch KEK from a real KMIP server once per batch, whichever thread converts', async () => {
    const kms = await startPyKmip({ nodes: 1 });
    try {
      const kenv = cleanEnv({
        VMSEAL_HOME: join(dir, 'kmip-home'),
        VMSEAL_KMS: kms.endpoints.map((e) => `${e.host}:${e.port}`).join(','),
        VMSEAL_KMS_CA: kms.caPath,
        VMSEAL_KMS_CERT: kms.clientCertPath,
        VMSEAL_KMS_KEY: kms.clientKeyPath,
      });
      // PyKMIP logs every request it processes; GetAttributes is a line of its own.
      const gets = (): number =>
        kms
          .log(0)
          .split('\n')
          .filter((l) => /Processing operation: Get\s*$/.test(l)).length;
      const inDir = join(dir, 'kmip-in');
      await mkdir(inDir);
      for (let i = 0; i < 8; i++) await rawImage(join(inDir, `k${i}.img`), MiB, 70 + i);

      const before = gets();
      const enc = json(
        ok(await vmseal(['convert', inDir, join(dir, 'kmip-enc'), '--subformat', 'monolithicSparse', '--encrypt', '--jobs', '3', '--json'], kenv)),
      );
      expect(enc).toMatchObject({ ok: true, converted: 8, workers: 1 });
      const afterEncrypt = gets();
      expect(afterEncrypt - before).toBe(1);

      const dec = json(
        ok(await vmseal(['convert', join(dir, 'kmip-enc'), join(dir, 'kmip-plain'), '--subformat', 'raw', '--decrypt', '--jobs', '3', '--json'], kenv)),
      );
      expect(dec).toMatchObject({ ok: true, converted: 8, workers: 1 });
      expect(gets() - afterEncrypt).toBe(1);
      for (let i = 0; i < 8; i++) expect(await sha256File(join(dir, 'kmip-plain', `k${i}.img`))).toBe(await sha256File(join(inDir, `k${i}.img`)));
    } finally {
      await kms.stop();
    }
  });
});
