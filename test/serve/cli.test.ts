// `vmseal serve` as a user runs it: the ready line, real clients over a Unix socket and loopback
// TCP, the disk's lock held while serving, a clean stop on SIGTERM, and refused command lines.
import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { vmseal } from '../cli/run-cli.js';
import { serveFixture, type ServeProcess } from '../cli/serve-process.js';
import { encryptedDisk, PASSPHRASE, plainRaw, random, run } from './helpers.js';

const MiB = 1 << 20;
const served = serveFixture('vmseal-serve-cli-');
let env: NodeJS.ProcessEnv;
let pwFile: string;
beforeAll(() => {
  env = served.env();
  pwFile = served.pwFile();
});

/** Start `vmseal serve …` and wait for its ready line(s). */
function startServe(args: string[], readyLines = 1): Promise<ServeProcess> {
  return served.start(args, (err) => (err.match(/^vmseal: serving \S+ on \S+$/gm) ?? []).length >= readyLines);
}

function freePort(): Promise<number> {
  return new Promise((done) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => done(port));
    });
  });
}

describe('vmseal serve', () => {
  it('serves an encrypted disk on a private Unix socket, holds its lock, and stops cleanly on SIGTERM', async () => {
    const dir = join(served.dir(), 'unix');
    await run('mkdir', ['-p', dir]);
    const content = random(4 * MiB);
    const plain = plainRaw(dir, 'plain', content);
    const disk = await encryptedDisk(dir, 'vm1', { subformat: 'monolithicSparse', capacity: 4 * MiB, content });
    const socket = join(dir, 'nbd.sock');
    const s = await startServe([disk, '--socket', socket, '--passphrase-file', pwFile]);
    expect(s.stderr()).toContain(`vmseal: serving vm1 on nbd+unix:///vm1?socket=${socket}`);
    expect(statSync(socket).mode & 0o777).toBe(0o600);
    expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', `nbd+unix:///vm1?socket=${socket}`, plain])).toMatch(/identical/);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 65536', `nbd+unix:///vm1?socket=${socket}`]);
    // No vmseal job opens a disk being served.
    const busy = await vmseal(['decrypt', disk, join(dir, 'busy.raw'), '--raw', '--passphrase-file', pwFile], env);
    expect(busy.code).toBe(7);
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    expect(s.stderr()).toMatch(/connection \d+ .*closed/);
    expect(s.stderr()).toMatch(/stopping: flushing every export/);
    expect(s.stderr()).not.toContain(PASSPHRASE);
    expect(existsSync(socket)).toBe(false);
    // The lock is released and the write is in the disk.
    const out = join(dir, 'out.raw');
    const dec = await vmseal(['decrypt', disk, out, '--raw', '--passphrase-file', pwFile], env);
    expect(dec.code).toBe(0);
    const expected = Buffer.from(content);
    expected.fill(0x42, 0, 65536);
    expect(readFileSync(out).equals(expected)).toBe(true);
  });

  it('serves several exports on loopback TCP with --listen and --export', async () => {
    const dir = join(served.dir(), 'tcp');
    await run('mkdir', ['-p', dir]);
    const a = plainRaw(dir, 'a', random(MiB));
    const b = await encryptedDisk(dir, 'b', { subformat: 'monolithicFlat', capacity: 2 * MiB });
    const port = await freePort();
    const s = await startServe(
      ['--export', `alpha=${a}`, '--export', `beta=${b}`, '--listen', `127.0.0.1:${port}`, '--read-only', '--passphrase-file', pwFile],
      2,
    );
    expect(s.stderr()).toContain(`vmseal: serving alpha on nbd://127.0.0.1:${port}/alpha`);
    expect(s.stderr()).toContain(`vmseal: serving beta on nbd://127.0.0.1:${port}/beta`);
    const info = JSON.parse(await run('nbdinfo', ['--json', `nbd://127.0.0.1:${port}/beta`]));
    expect(info.exports[0]).toMatchObject({ 'export-size': 2 * MiB, is_read_only: true });
    expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', `nbd://127.0.0.1:${port}/alpha`, a])).toMatch(/identical/);
    s.child.kill('SIGINT');
    expect(await s.exit).toBe(0);
  });

  it('names the export with --name, and exits 3 without starting when the disk does not unlock', async () => {
    const dir = join(served.dir(), 'name');
    await run('mkdir', ['-p', dir]);
    const disk = await encryptedDisk(dir, 'vm2', { subformat: 'monolithicFlat', capacity: MiB });
    const socket = join(dir, 'nbd.sock');
    const wrongPw = join(dir, 'wrong');
    writeFileSync(wrongPw, 'not-the-passphrase\n', { mode: 0o600 });
    const wrong = await vmseal(['serve', disk, '--socket', socket, '--name', 'boot', '--passphrase-file', wrongPw], env);
    expect(wrong.code).toBe(3);
    expect(wrong.stderr).not.toMatch(/serving/);
    expect(existsSync(socket)).toBe(false);
    const s = await startServe([disk, '--socket', socket, '--name', 'boot', '--passphrase-file', pwFile, '--json']);
    expect(s.stderr()).toContain(`vmseal: serving boot on nbd+unix:///boot?socket=${socket}`);
    expect(await run('nbdinfo', ['--size', `nbd+unix:///boot?socket=${socket}`])).toBe(`${MiB}\n`);
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    const result = JSON.parse(s.stdout());
    expect(result).toMatchObject({
      ok: true,
      command: 'serve',
      address: { transport: 'unix', path: socket },
      exports: [{ name: 'boot', encrypted: true, size: MiB }],
    });
  });

  it('refuses a non-loopback --listen without --insecure-plaintext, a --name for two disks and two exports of one name', async () => {
    const dir = join(served.dir(), 'refuse');
    await run('mkdir', ['-p', dir]);
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const insecure = await vmseal(['serve', a, '--listen', '0.0.0.0:0'], env);
    expect(insecure.code).toBe(2);
    expect(insecure.stderr).toMatch(/not a loopback address.*--insecure-plaintext/s);
    const name = await vmseal(['serve', a, a, '--name', 'x', '--socket', join(dir, 's')], env);
    expect(name.code).toBe(2);
    expect(name.stderr).toMatch(/--name names the one DISK/);
    const twice = await vmseal(['serve', '--export', `x=${a}`, '--export', `x=${a}`, '--socket', join(dir, 's')], env);
    expect(twice.code).toBe(2);
    expect(twice.stderr).toMatch(/two disks would be served as export 'x'/);
    const both = await vmseal(['serve', a, '--socket', join(dir, 's'), '--listen', '127.0.0.1:1'], env);
    expect(both.code).toBe(2);
  });
});
