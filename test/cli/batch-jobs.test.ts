// `vmseal convert DIR OUTDIR --jobs N`: images of a batch converted at once. Runs the built CLI on
// images made by qemu-img/qemu-io: the outputs are the same whatever N, the summary lines come in
// input order, a bad image does not stop the others, and Ctrl-C in the middle of a batch leaves
// nothing half-written.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, expectOneLineError, json, qemuImg, sha256File, vmseal, vmsealChild, type CliResult } from './run-cli.js';

const execFileP = promisify(execFile);
const MiB = 1024 * 1024;

let dir: string;
let env: NodeJS.ProcessEnv;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A raw image of `size` bytes whose first `dataBytes` hold the byte `pattern` (qemu-io writes them). */
async function rawImage(path: string, size: number, pattern: number, dataBytes = Math.min(size, MiB)): Promise<void> {
  await qemuImg(['create', '-q', '-f', 'raw', path, String(size)]);
  await execFileP('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} 0 ${dataBytes}`, '-c', `write -P ${pattern + 1} ${size - 4096} 4096`, path]);
}

/** The `[i/n] …` lines of a human batch run, as [index, input file name]. */
function summaryLines(stdout: string): Array<[number, string]> {
  return [...stdout.matchAll(/^\[(\d+)\/\d+\] (?:ok|FAILED|skipped|not run)\s+(\S+?)(?::| ->)/gm)].map((m) => [Number(m[1]), m[2]!.split('/').pop()!]);
}

/** Decrypt every image of `encDir` to raw with one batch, and return sha256 per output name. */
async function decryptedHashes(encDir: string, plainDir: string): Promise<Record<string, string>> {
  ok(await vmseal(['convert', encDir, plainDir, '--subformat', 'raw', '--decrypt', '--jobs', '2'], env));
  const hashes: Record<string, string> = {};
  for (const name of (await readdir(plainDir)).sort()) hashes[name] = await sha256File(join(plainDir, name));
  return hashes;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-batch-jobs-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('convert DIR OUTDIR --jobs', () => {
  it('gives the same outputs with --jobs 1 and --jobs 4, which decrypt to the inputs', async () => {
    const inDir = join(dir, 'same-in');
    await mkdir(inDir);
    const expected: Record<string, string> = {};
    for (let i = 1; i <= 6; i++) {
      const path = join(inDir, `d${i}.img`);
      await rawImage(path, 2 * MiB, i * 16);
      expected[`d${i}.img`] = await sha256File(path);
    }
    // A VMDK among the raw images: its raw content is d1's.
    await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', join(inDir, 'd1.img'), join(inDir, 'v.vmdk')]);
    expected['v.img'] = expected['d1.img']!;

    const runs: Record<string, Record<string, unknown>> = {};
    for (const jobs of ['1', '4']) {
      const r = ok(
        await vmseal(['convert', inDir, join(dir, `same-enc${jobs}`), '--subformat', 'monolithicSparse', '--encrypt', '--jobs', jobs, '--json'], env),
      );
      runs[jobs] = json(r);
      expect(await decryptedHashes(join(dir, `same-enc${jobs}`), join(dir, `same-plain${jobs}`))).toEqual(expected);
    }
    const outline = (j: Record<string, any>) => ({
      converted: j.converted,
      failed: j.failed,
      results: j.results.map((x: Record<string, unknown>) => [String(x.input).split('/').pop(), String(x.output).split('/').pop(), x.ok, x.bytes]),
    });
    expect(runs['4']).toMatchObject({ ok: true, images: 7, converted: 7, failed: 0, notRun: 0, jobs: 4 });
    expect(runs['1']).toMatchObject({ jobs: 1 });
    expect(outline(runs['4']!)).toEqual(outline(runs['1']!));
  });

  it('prints the summary lines in input order, and keeps going past a bad image', async () => {
    const inDir = join(dir, 'order-in');
    await mkdir(inDir);
    // The first image is the biggest, so with 4 jobs it finishes after the ones behind it.
    await rawImage(join(inDir, 'a.img'), 48 * MiB, 1, 48 * MiB);
    await writeFile(join(inDir, 'b-bad.vmdk'), Buffer.concat([Buffer.from('KDMV'), Buffer.alloc(100, 0xff)]));
    for (const name of ['c', 'd', 'e', 'f']) await rawImage(join(inDir, `${name}.img`), MiB, 7);

    const h = await vmseal(['convert', inDir, join(dir, 'order-out'), '--subformat', 'monolithicSparse', '--jobs', '4'], env);
    expect(h.code).toBe(1);
    expect(summaryLines(h.stdout)).toEqual([
      [1, 'a.img'],
      [2, 'b-bad.vmdk'],
      [3, 'c.img'],
      [4, 'd.img'],
      [5, 'e.img'],
      [6, 'f.img'],
    ]);
    expect(h.stdout).toMatch(/^\[2\/6\] FAILED .*b-bad\.vmdk: .*\(ERR_VMDK_/m);
    expect(h.stdout).toMatch(/^5 of 6 images converted, 1 failed;/m);
    expectOneLineError(h);
    expect((await readdir(join(dir, 'order-out'))).filter((n) => !n.startsWith('.')).sort()).toEqual(['a.vmdk', 'c.vmdk', 'd.vmdk', 'e.vmdk', 'f.vmdk']);

    const j = json(await vmseal(['convert', inDir, join(dir, 'order-json'), '--subformat', 'monolithicSparse', '--jobs', '4', '--json'], env));
    expect(j).toMatchObject({ ok: false, images: 6, converted: 5, failed: 1, notRun: 0, interrupted: false });
    expect(j.results.map((x: { input: string; ok: boolean }) => [x.input.split('/').pop(), x.ok])).toEqual([
      ['a.img', true],
      ['b-bad.vmdk', false],
      ['c.img', true],
      ['d.img', true],
      ['e.img', true],
      ['f.img', true],
    ]);
  });

  it('refuses a --jobs that is not a whole number from 1 to 64', async () => {
    for (const bad of ['0', '65', 'four']) {
      const r = await vmseal(['convert', join(dir, 'nowhere'), join(dir, 'nowhere-out'), '--subformat', 'raw', '--jobs', bad], env);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toMatch(/--jobs .* is not a whole number from 1 to 64/);
    }
  });

  it('on SIGINT cleans up every image in flight, reports them as not run and exits 130', async () => {
    const inDir = join(dir, 'int-in');
    const outDir = join(dir, 'int-out');
    await mkdir(inDir);
    const names: string[] = [];
    for (let i = 0; i < 6; i++) {
      names.push(`big${i}.img`);
      await rawImage(join(inDir, `big${i}.img`), 24 * MiB, 32 + i, 24 * MiB);
    }
    const child = vmsealChild(['convert', inDir, outDir, '--subformat', 'monolithicSparse', '--encrypt', '--jobs', '4'], env);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += String(d)));
    child.stderr.on('data', (d) => (stderr += String(d)));
    const closed = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    // Interrupt once at least two images are being written (their staging folders exist).
    const staging = async (): Promise<string[]> => (await readdir(outDir).catch(() => [] as string[])).filter((n) => n.includes('.vmseal-tmp-'));
    const guard = Date.now() + 30_000;
    while ((await staging()).length < 2 && child.exitCode === null && Date.now() < guard) await new Promise((r) => setTimeout(r, 5));
    child.kill('SIGINT');
    expect(await closed).toBe(130);

    expect(await staging()).toEqual([]);
    const notRun = summaryLines(stdout).filter(([i]) => new RegExp(`^\\[${i}/6\\] not run `, 'm').test(stdout));
    expect(notRun.length).toBeGreaterThanOrEqual(1);
    expect(stdout).toMatch(/not run \(interrupted\)/);
    expect(stderr).toMatch(/interrupted/);
    // What is left under a final name is a complete image that was reported ok.
    const okNames = summaryLines(stdout)
      .filter(([i]) => new RegExp(`^\\[${i}/6\\] ok `, 'm').test(stdout))
      .map(([, name]) => name.replace(/\.img$/, '.vmdk'));
    expect((await readdir(outDir)).filter((n) => !n.startsWith('.')).sort()).toEqual(okNames.sort());
    for (const [, name] of notRun) expect((await readdir(outDir)).some((n) => n.startsWith(name.replace(/\.img$/, '')))).toBe(false);

    // Nothing holds the outputs any more (no lock records left either): the re-run finishes the batch.
    const again = json(ok(await vmseal(['convert', inDir, outDir, '--subformat', 'monolithicSparse', '--encrypt', '--skip-existing', '--json'], env)));
    expect(again).toMatchObject({ converted: 6 - okNames.length, skipped: okNames.length, failed: 0 });
    expect((await readdir(outDir)).sort()).toEqual(names.map((n) => n.replace(/\.img$/, '.vmdk')));
  });
});
