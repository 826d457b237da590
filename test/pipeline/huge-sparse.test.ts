// A 16 TiB monolithicSparse disk (qemu-img create) with a few MiB of data at scattered offsets goes
// through info, encrypt, verify and decrypt with work and memory that follow the data, not the
// capacity: the answers are checked against the known data (an independent contentHash, qemu-io
// reads of the decrypted disk), each child's peak RSS (VmHWM) is bounded, and SIGTERM stops a
// `verify --sha256` (which hashes 16 TiB of zeros) with exit 130. No timing assertion: the vitest
// timeouts only guard against hangs.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal, vmsealChild, type CliResult } from '../cli/run-cli.js';
import { contentHashOfPieces } from './helpers.js';

const execFileP = promisify(execFile);
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const CAPACITY = 16 * TiB;
/** Peak resident memory allowed to each vmseal child (VmHWM). */
const RSS_LIMIT = 200 * MiB;

/** What qemu-io writes (a byte pattern per range; 0 = allocated zeros), in offset order. */
const WRITES = [
  { offset: 0, length: 1 * MiB, pattern: 0x11 },
  { offset: 1 * TiB, length: 2 * MiB, pattern: 0x22 },
  { offset: 2 * TiB, length: 64 * KiB, pattern: 0x00 },
  // Across a 2 GiB extent boundary and a grain-table boundary.
  { offset: 8 * TiB - 512 * KiB, length: 1 * MiB, pattern: 0x33 },
  { offset: CAPACITY - 1 * MiB, length: 1 * MiB, pattern: 0x44 },
];
const DATA = WRITES.filter((w) => w.pattern !== 0).reduce((n, w) => n + w.length, 0);
/** Places that must read as zeros after the round trip. */
const HOLES = [
  { offset: 1 * MiB, length: 1 * MiB },
  { offset: 2 * TiB, length: 64 * KiB },
  { offset: 4 * TiB, length: 1 * MiB },
  { offset: CAPACITY - 2 * MiB, length: 1 * MiB },
];

let tmp: ReturnType<typeof tempDir>;
let env: NodeJS.ProcessEnv;
let plain: string;
let hwmPreload: string;

async function qemuIo(disk: string, commands: string[]): Promise<string> {
  const { stdout } = await execFileP('qemu-io', ['-f', 'vmdk', ...commands.flatMap((c) => ['-c', c]), disk], { maxBuffer: 1 << 20 });
  return stdout;
}

/** Run the CLI with a preload that records its peak RSS (VmHWM of /proc/self/status) at exit. */
async function measured(name: string, args: string[]): Promise<{ r: CliResult; hwm: number }> {
  const out = join(tmp.dir, `${name}.hwm`);
  const r = await vmseal(args, { ...env, NODE_OPTIONS: `--require ${hwmPreload}`, HWM_OUT: out }, { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`vmseal ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return { r, hwm: Number(readFileSync(out, 'utf8')) * KiB };
}

const expectedContentHash = (): string =>
  contentHashOfPieces(WRITES.filter((w) => w.pattern !== 0).map((w) => ({ offset: w.offset, data: Buffer.alloc(w.length, w.pattern) })));

beforeAll(async () => {
  tmp = tempDir('vmseal-huge-sparse-');
  env = cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home') });
  hwmPreload = join(tmp.dir, 'hwm.cjs');
  writeFileSync(
    hwmPreload,
    `process.on('exit', () => { const m = /VmHWM:\\s+(\\d+) kB/.exec(require('fs').readFileSync('/proc/self/status', 'utf8')); require('fs').writeFileSync(process.env.HWM_OUT, m ? m[1] : 'NaN'); });\n`,
  );
  plain = join(tmp.dir, 'plain.vmdk');
  await execFileP('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', plain, String(CAPACITY)]);
  await qemuIo(
    plain,
    WRITES.map((w) => `write -P ${w.pattern} ${w.offset} ${w.length}`),
  );
}, 60_000);

afterAll(() => tmp?.cleanup());

describe('a 16 TiB sparse disk with 5 MiB of data', () => {
  const enc = (): string => join(tmp.dir, 'enc.vmdk');
  const dec = (): string => join(tmp.dir, 'dec.vmdk');

  it('info: sizes from the metadata, in bounded memory', async () => {
    const { r, hwm } = await measured('info', ['info', plain, '--json']);
    const info = json(r);
    expect(info).toMatchObject({ ok: true, subformat: 'monolithicSparse', virtualSize: CAPACITY, allocatedSize: DATA + 64 * KiB, encrypted: false });
    expect(hwm).toBeLessThan(RSS_LIMIT);
  }, 60_000);

  it('verify of the plain disk: contentHash of the known data, holes not read', async () => {
    const { r, hwm } = await measured('verify-plain', ['verify', plain, '--json']);
    const v = json(r);
    expect(v).toMatchObject({ ok: true, encrypted: false, virtualSize: CAPACITY, contentHash: expectedContentHash(), problems: [] });
    expect(v.sha256).toBeUndefined();
    expect(v.bytesRead).toBe(DATA + 64 * KiB);
    expect(hwm).toBeLessThan(RSS_LIMIT);
  }, 60_000);

  it('encrypt to monolithicSparse: only the data is written', async () => {
    const { r, hwm } = await measured('encrypt', ['encrypt', plain, enc(), '--subformat', 'monolithicSparse', '--json']);
    expect(json(r)).toMatchObject({ ok: true, encrypted: true, subformat: 'monolithicSparse', virtualSize: CAPACITY, bytesProcessed: DATA + 64 * KiB });
    expect(hwm).toBeLessThan(RSS_LIMIT);
    const info = json(await vmseal(['info', enc(), '--json'], env));
    // The allocated zero block is left out; unit 0 holds data anyway.
    expect(info).toMatchObject({ encrypted: true, virtualSize: CAPACITY, allocatedSize: DATA });
  }, 60_000);

  it('verify of the encrypted disk: the same contentHash as the plain one', async () => {
    const { r, hwm } = await measured('verify-enc', ['verify', enc(), '--json']);
    expect(json(r)).toMatchObject({ ok: true, encrypted: true, contentHash: expectedContentHash(), bytesRead: DATA });
    expect(hwm).toBeLessThan(RSS_LIMIT);
    const both = json(await vmseal(['verify', enc(), '--against', plain, '--json'], env));
    expect(both).toMatchObject({ ok: true, contentHash: expectedContentHash(), againstContentHash: expectedContentHash() });
  }, 60_000);

  it('decrypt back to monolithicSparse: the data where it was, zeros elsewhere', async () => {
    const { r, hwm } = await measured('decrypt', ['decrypt', enc(), dec(), '--subformat', 'monolithicSparse', '--json']);
    expect(json(r)).toMatchObject({ ok: true, encrypted: false, virtualSize: CAPACITY, bytesProcessed: DATA });
    expect(hwm).toBeLessThan(RSS_LIMIT);
    const reads = [...WRITES.map((w) => `read -P ${w.pattern} ${w.offset} ${w.length}`), ...HOLES.map((h) => `read -P 0 ${h.offset} ${h.length}`)];
    const out = await qemuIo(dec(), reads);
    expect(out).not.toMatch(/verification failed|error/i);
    expect(out.match(/^read \d+\/\d+ bytes/gm)).toHaveLength(reads.length);
    const info = json(await vmseal(['info', dec(), '--json'], env));
    expect(info).toMatchObject({ encrypted: false, virtualSize: CAPACITY, allocatedSize: DATA });
  }, 60_000);

  it('a monolithicSparse output whose data cannot fit in one sparse file is refused up front: exit 5', async () => {
    // A raw image's every byte counts as data: 3 TiB cannot fit in one file of 32-bit sector numbers.
    const dir = join(tmp.dir, 'too-big');
    mkdirSync(dir);
    const raw = join(dir, 'big.raw');
    writeFileSync(raw, '');
    truncateSync(raw, 3 * TiB);
    const r = await vmseal(['encrypt', raw, join(dir, 'out.vmdk'), '--subformat', 'monolithicSparse', '--json'], env, { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(5);
    expect(json(r).error).toMatchObject({ code: 'ERR_VMDK_LIMIT', message: expect.stringMatching(/twoGbMaxExtentSparse/) });
    expect(r.stderr).toMatch(/--subformat twoGbMaxExtentSparse/);
    expect(readdirSync(dir)).toEqual(['big.raw']);
  }, 40_000);

  it('SIGTERM stops verify --sha256 (16 TiB of zeros to hash) with exit 130', async () => {
    // An empty disk: once open, hashing its zeros is all there is to do (before, one synchronous loop
    // that no signal could stop), wherever the signal lands.
    const empty = join(tmp.dir, 'empty.vmdk');
    await execFileP('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', empty, String(CAPACITY)]);
    const child = vmsealChild(['verify', empty, '--sha256', '--json'], env);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const guard = setTimeout(() => child.kill('SIGKILL'), 30_000);
    try {
      // Most likely past start-up and opening, into the zeros (earlier is fine too).
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      child.kill('SIGTERM');
      expect(await exited, stderr).toBe(130);
      expect(stderr).toMatch(/cancelled|interrupted/);
    } finally {
      clearTimeout(guard);
      child.kill('SIGKILL');
    }
  }, 40_000);
});
