// Ctrl-C during `vmseal convert` on the kernel-copy path (copy_file_range, src/pipeline/kernel-copy.ts),
// forced on tmpfs by VMSEAL_KERNEL_COPY=1: one image and a batch whose images run in a worker
// thread too. The built CLI runs as a child process and gets a real SIGINT mid-copy: it exits 130,
// no output or staging folder is left, the inputs are untouched, and a batch reports every image
// in flight as not run.
import { closeSync, existsSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchItemResult } from '../../src/cli/batch.js';
import { BatchPool } from '../../src/cli/batch-pool.js';
import { BatchQueue } from '../../src/cli/batch-queue.js';
import { makeCtx } from '../../src/cli/context.js';
import { KeyDesk } from '../../src/cli/key-bridge.js';
import { KeySession } from '../../src/cli/key-session.js';
import { Output } from '../../src/cli/output.js';
import { DEFAULT_CIPHER, DEFAULT_UNIT_SIZE } from '../../src/disk/params.js';
import { KERNEL_COPY_ENV } from '../../src/pipeline/kernel-copy.js';
import { cleanEnv, json, vmseal, vmsealChild, type CliResult } from './run-cli.js';

/** The built worker script, as the CLI runs it. */
const SCRIPT = new URL('../../dist/cli/batch-worker.js', import.meta.url);

const KiB = 1024;
const MiB = 1024 * KiB;
/**
 * Kernel-copy inputs: 4 KiB of data every STRIDE bytes. Each data range is a piece of its own, and
 * an interrupt is honoured between pieces: many pieces make a copy long enough to be interrupted in
 * the middle (16,384 pieces, a second or more) without many bytes (64 MiB of data).
 */
const STRIDE = 8 * KiB;
const IMAGE_BYTES = 128 * MiB;

let dir: string;
let env: NodeJS.ProcessEnv;

beforeAll(async () => {
  // tmpfs where there is one (VMSEAL_KERNEL_COPY=1 makes the kernel copy run there too).
  dir = await mkdtemp(join(existsSync('/dev/shm') ? '/dev/shm' : tmpdir(), 'vmseal-convert-int-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), [KERNEL_COPY_ENV]: '1' });
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A sparse raw image of `size` bytes with 4 KiB of `fill` every `stride` bytes. */
function stripedImage(path: string, size: number, stride: number, fill: (index: number) => number): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    const block = Buffer.alloc(4 * KiB);
    for (let at = 0, i = 0; at < size; at += stride, i++) writeSync(fd, block.fill(fill(i)), 0, block.length, at);
  } finally {
    closeSync(fd);
  }
}

/**
 * What would change if anything wrote to a file or replaced it: its inode, size, allocation and
 * times (hashing the bytes would cost seconds per image on a loaded machine, and any write moves
 * mtime and ctime).
 */
async function fingerprint(path: string): Promise<string> {
  const s = await stat(path, { bigint: true });
  return [s.ino, s.size, s.blocks, s.mode, s.mtimeNs, s.ctimeNs].join(' ');
}

/** Bytes a file holds (not its holes). */
async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

/** The staging folders in `outDir` whose output file holds copied data. */
async function copyingStages(outDir: string): Promise<string[]> {
  const stages = (await readdir(outDir).catch(() => [] as string[])).filter((n) => n.includes('.vmseal-tmp-'));
  const copying: string[] = [];
  for (const stage of stages) {
    const files = await readdir(join(outDir, stage)).catch(() => [] as string[]);
    for (const f of files.filter((n) => n.endsWith('.img'))) if ((await allocated(join(outDir, stage, f)).catch(() => 0)) > 0) copying.push(stage);
  }
  return copying;
}

/** Start the CLI, SIGINT it once `stages` outputs are being copied, and return how it ended. */
async function interrupted(args: string[], outDir: string, stages: number): Promise<CliResult> {
  const child = vmsealChild(args, env);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += String(d)));
  child.stderr.on('data', (d) => (stderr += String(d)));
  const closed = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  const guard = Date.now() + 30_000;
  while ((await copyingStages(outDir)).length < stages && child.exitCode === null && Date.now() < guard) await new Promise((r) => setTimeout(r, 5));
  child.kill('SIGINT');
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  try {
    return await closed;
  } finally {
    clearTimeout(killer);
  }
}

describe('SIGINT during a kernel copy', () => {
  it('takes the kernel copy for one image and for every image of a batch, worker threads included', async () => {
    // Zeros stored as data tell the two paths apart: the kernel copies them, the engine leaves holes.
    // Each image is a few thousand pieces: the main thread cannot finish the batch alone before its
    // worker thread is ready, and the worker converts the last ones.
    const inDir = join(dir, 'path-in');
    await mkdir(inDir);
    for (let i = 0; i < 6; i++) stripedImage(join(inDir, `z${i}.img`), 16 * MiB, STRIDE, () => 0);
    const one = join(dir, 'one-z.img');
    ok(await vmseal(['convert', join(inDir, 'z0.img'), one, '--subformat', 'raw'], env));
    expect(await allocated(one)).toBeGreaterThan(0);

    const outDir = join(dir, 'path-out');
    const batch = json(ok(await vmseal(['convert', inDir, outDir, '--subformat', 'raw', '--jobs', '3', '--json'], env)));
    expect(batch).toMatchObject({ converted: 6, failed: 0, workers: 1 });
    for (const name of await readdir(outDir)) expect({ name, kernelCopied: (await allocated(join(outDir, name))) > 0 }).toEqual({ name, kernelCopied: true });
  });

  it('a worker thread takes the kernel copy when VMSEAL_KERNEL_COPY says so, as the main thread does', async () => {
    // The pool itself (the batch above may run every image on the main thread if its worker is slow to start).
    const ctx = makeCtx({
      output: new Output({ quiet: true }),
      signal: new AbortController().signal,
      env: {},
      io: { input: new PassThrough(), output: new PassThrough() },
    });
    const desk = new KeyDesk(new KeySession(ctx, { home: join(dir, 'home') }), async () => []);
    const saved = process.env[KERNEL_COPY_ENV];
    process.env[KERNEL_COPY_ENV] = '1';
    const input = join(dir, 'pool-z.img');
    stripedImage(input, 4 * MiB, 64 * KiB, () => 0);
    const output = join(dir, 'pool-z-out.img');
    const queue = new BatchQueue(1, 1);
    const pool = new BatchPool(
      SCRIPT,
      [1],
      { opts: { cipher: DEFAULT_CIPHER, unitSize: DEFAULT_UNIT_SIZE, subformat: 'raw' }, passphraseGiven: false },
      desk,
      [{ input, output }],
      queue,
    );
    try {
      const run = new Promise<BatchItemResult | undefined>((resolve) => pool.start(queue, (_i, r) => resolve(r)));
      expect(await run).toMatchObject({ ok: true, bytes: 4 * MiB });
      expect(await allocated(output)).toBeGreaterThan(0);
    } finally {
      await pool.close();
      if (saved === undefined) delete process.env[KERNEL_COPY_ENV];
      else process.env[KERNEL_COPY_ENV] = saved;
    }
  });

  it('one image: exits 130, leaves no output and the input untouched', async () => {
    const inDir = join(dir, 'one-in');
    await mkdir(inDir);
    const input = join(inDir, 'big.img');
    stripedImage(input, IMAGE_BYTES, STRIDE, (i) => 1 + (i % 250));
    const before = await fingerprint(input);
    const outDir = join(dir, 'one-out');
    await mkdir(outDir);

    const r = await interrupted(['convert', input, join(outDir, 'big.img'), '--subformat', 'raw'], outDir, 1);
    expect(r.code, r.stderr).toBe(130);
    expect(r.stderr).toMatch(/interrupted/);
    expect(await readdir(outDir)).toEqual([]);
    expect(await readdir(inDir)).toEqual(['big.img']);
    expect(await fingerprint(input)).toBe(before);
  });

  it('a batch with --jobs 2: every image in flight is removed and reported as not run, exit 130', async () => {
    const inDir = join(dir, 'batch-in');
    await mkdir(inDir);
    const names = ['a.img', 'b.img', 'c.img'];
    const before: Record<string, string> = {};
    for (const [n, name] of names.entries()) {
      stripedImage(join(inDir, name), IMAGE_BYTES, STRIDE, (i) => 1 + ((i + n) % 250));
      before[name] = await fingerprint(join(inDir, name));
    }
    const outDir = join(dir, 'batch-out');

    // Two images in flight, both on the main thread (two jobs start no worker thread).
    const r = await interrupted(['convert', inDir, outDir, '--subformat', 'raw', '--jobs', '2'], outDir, 2);
    expect(r.code, r.stderr).toBe(130);
    const notRun = [...r.stdout.matchAll(/^\[(\d)\/3\] not run (\S+): interrupted, its output removed$/gm)].map((m) => m[2]!.split('/').pop());
    expect(notRun).toEqual(['a.img', 'b.img']);
    expect(r.stdout).toMatch(/^0 of 3 images converted, 0 failed, 3 not run \(interrupted\)/m);
    expect(r.stderr).toMatch(/interrupted/);
    expect(await readdir(outDir)).toEqual([]);
    expect((await readdir(inDir)).sort()).toEqual(names);
    for (const name of names) expect(await fingerprint(join(inDir, name))).toBe(before[name]);
  });
});
