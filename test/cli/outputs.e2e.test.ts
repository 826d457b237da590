// The output kind comes from --subformat/--raw, never from the name; --format says what a file read
// is; a running qemu-nbd holding a disk blocks an in-place deep rekey of it (qemu's own lock bytes).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, patternBytes } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from './run-cli.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let env: NodeJS.ProcessEnv;
let input: string;

beforeAll(() => {
  tmp = tempDir('vmseal-cli-outputs-');
  env = cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home') });
  input = join(tmp.dir, 'input.raw');
  writeFileSync(input, patternBytes(4 * MiB, 11));
});
afterAll(() => tmp.cleanup());

describe('output kind', () => {
  it('a VMDK output named .img works with a note, and reads back with --format vmdk', async () => {
    const out = join(tmp.dir, 'enc.img');
    const r = await vmseal(['encrypt', input, out, '--subformat', 'monolithicFlat'], env);
    expect(r.stderr).toContain('is a VMDK (monolithicFlat) although its name ends like a raw image; commands that read it need --format vmdk');
    expect(r.stderr).not.toMatch(/^vmseal: /m);
    expect(r.code).toBe(0);
    expect(existsSync(join(tmp.dir, 'enc-flat.vmdk'))).toBe(true);

    const info = await vmseal(['--json', 'info', out, '--format', 'vmdk'], env);
    expect(info.code).toBe(0);
    expect(json(info)).toMatchObject({ format: 'vmdk', subformat: 'monolithicFlat', encrypted: true });

    const ok = await vmseal(['verify', out, '--format', 'vmdk', '--against', input], env);
    expect(ok.stdout).toMatch(/^OK/);
    expect(ok.code).toBe(0);
    // Without --format the name says raw: the descriptor text is not a disk, and verify never says OK.
    const guessed = await vmseal(['verify', out, '--against', input], env);
    expect(guessed.code).not.toBe(0);
    expect(guessed.stdout).not.toMatch(/^OK/);

    // And decrypt reads it as what --format says.
    const back = join(tmp.dir, 'back.raw');
    const d = await vmseal(['decrypt', out, back, '--raw', '--format', 'vmdk'], env);
    expect(d.code).toBe(0);
    expect(readFileSync(back).equals(readFileSync(input))).toBe(true);
  });

  it('in-place jobs, rekeys and resume take --format vmdk for a VMDK named .img', async () => {
    const disk = join(tmp.dir, 'inplace.img');
    const c = await vmseal(['convert', input, disk, '--subformat', 'monolithicFlat'], env);
    expect(c.code, c.stderr).toBe(0);
    for (const args of [
      ['encrypt', disk, '--in-place', '--format', 'vmdk'],
      ['rekey', disk, '--shallow', '--format', 'vmdk'],
      ['rekey', disk, '--deep', '--in-place', '--format', 'vmdk'],
      ['rekey', disk, '--deep', '--format', 'vmdk'],
      ['resume', disk, '--format', 'vmdk'],
    ]) {
      const r = await vmseal(args, env);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(0);
    }
    const v = await vmseal(['verify', disk, '--format', 'vmdk', '--against', input], env);
    expect(v.stdout).toMatch(/^OK .*\(encrypted\)/);
    expect(v.code).toBe(0);
    expect((await vmseal(['encrypt', input, '--in-place', '--format', 'raw'], env)).code).toBe(2);
  });

  it('a raw output named .vmdk is refused with exit 2 and the reason, before anything is written', async () => {
    const enc = join(tmp.dir, 'for-raw.vmdk');
    expect((await vmseal(['encrypt', input, enc], env)).code).toBe(0);
    const before = readdirSync(tmp.dir).sort();
    for (const args of [
      ['decrypt', enc, join(tmp.dir, 'plain.vmdk'), '--raw'],
      ['decrypt', enc, join(tmp.dir, 'plain.vmdk'), '--subformat', 'raw'],
      ['convert', input, join(tmp.dir, 'plain.vmdk'), '--subformat', 'raw'],
    ]) {
      const r = await vmseal(args, env);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr).toContain('guessing its format from guest-written content');
    }
    expect(readdirSync(tmp.dir).sort()).toEqual(before);
  });

  it('--format raw reads a file as raw although its content starts like a VMDK descriptor', async () => {
    const guest = join(tmp.dir, 'guest.bin');
    const img = Buffer.alloc(MiB);
    Buffer.from(`# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8192 FLAT "input.raw" 0\n`).copy(img);
    writeFileSync(guest, img);
    const told = await vmseal(['--json', 'info', guest, '--format', 'raw'], env);
    expect(told.code).toBe(0);
    expect(json(told)).toMatchObject({ format: 'raw', virtualSize: MiB });
    const bad = await vmseal(['info', guest, '--format', 'qcow2'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('--format "qcow2" is not a disk format');
  });
});

const hasQemuNbd = spawnSync('qemu-nbd', ['--version']).status === 0;

describe.skipIf(!hasQemuNbd)('qemu-nbd', () => {
  it('a running qemu-nbd (read-write) on the disk blocks `rekey --deep --in-place` with ERR_QEMU_LOCKED; the disk is untouched', async () => {
    const disk = join(tmp.dir, 'served.vmdk');
    expect((await vmseal(['encrypt', input, disk, '--subformat', 'monolithicFlat'], env)).code).toBe(0);
    const descriptor = readFileSync(disk);
    const extent = readFileSync(join(tmp.dir, 'served-flat.vmdk'));
    const pidFile = join(tmp.dir, 'qemu-nbd.pid');
    const socket = join(tmp.dir, 'nbd.sock');
    // --fork returns once the server is listening (it holds its locks by then).
    const started = spawnSync('qemu-nbd', ['-f', 'vmdk', '--fork', `--pid-file=${pidFile}`, '-k', socket, disk], { encoding: 'utf8' });
    expect(started.stderr).toBe('');
    expect(started.status).toBe(0);
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    try {
      const r = await vmseal(['--json', 'rekey', disk, '--deep', '--in-place'], env);
      expect(r.code).toBe(7);
      expect(json(r).error).toMatchObject({ code: 'ERR_QEMU_LOCKED', message: expect.stringContaining('qemu') });
    } finally {
      process.kill(pid, 'SIGTERM');
      // The server exits on SIGTERM; wait for it so that the temp folder can go.
      for (let i = 0; i < 500 && processExists(pid); i++) await new Promise((r) => setTimeout(r, 10));
    }
    expect(readFileSync(disk).equals(descriptor)).toBe(true);
    expect(readFileSync(join(tmp.dir, 'served-flat.vmdk')).equals(extent)).toBe(true);
    expect(existsSync(`${disk}.vmseal-journal`)).toBe(false);
    // Once qemu-nbd is gone, the same command runs.
    const after = await vmseal(['rekey', disk, '--deep', '--in-place'], env);
    expect(after.code).toBe(0);
  });
});

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
