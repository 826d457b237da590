// `vmseal host status|attach|detach|unlock` against a real `vmseal serve` child, through its control
// socket: the table and --json, attach and detach while serving (the lock released after detach),
// typed errors with exit codes and hints, the default control path, and the control socket's lock
// (a second server refused, a SIGKILLed server's socket taken over, SIGTERM removes it).
import { beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { json, vmseal } from './run-cli.js';
import { serveFixture, type ServeProcess } from './serve-process.js';
import { encryptedDisk, PASSPHRASE, plainRaw, random, run } from '../serve/helpers.js';

const MiB = 1 << 20;
const served = serveFixture('vmseal-host-cli-');
let env: NodeJS.ProcessEnv;
let pwFile: string;
beforeAll(() => {
  env = served.env();
  pwFile = served.pwFile();
});

function sub(name: string): string {
  const d = join(served.dir(), name);
  mkdirSync(d, { mode: 0o700 });
  return d;
}

/** Start `vmseal serve …` and wait until its control socket is announced. */
function startServe(args: string[], childEnv = env): Promise<ServeProcess> {
  return served.start(args, (err) => /^vmseal: control socket /m.test(err), childEnv);
}

describe('vmseal host', () => {
  it('status, attach and detach a running server through --control', async () => {
    const dir = sub('commands');
    const content = random(2 * MiB);
    const plain = plainRaw(dir, 'plain', content);
    const first = plainRaw(dir, 'first', Buffer.alloc(MiB, 7));
    const disk = await encryptedDisk(dir, 'vm1', { subformat: 'monolithicSparse', capacity: 2 * MiB, content });
    const control = join(dir, 'ctl', 'serve.sock');
    const socket = join(dir, 'nbd.sock');
    const s = await startServe([first, '--name', 'first', '--socket', socket, '--control', control, '--passphrase-file', pwFile]);
    expect(s.stderr()).toContain(`vmseal: control socket ${control}`);
    expect(statSync(control).mode & 0o777).toBe(0o600);

    const attach = await vmseal(['host', 'attach', disk, '--control', control], env);
    expect(attach.code, attach.stderr).toBe(0);
    expect(attach.stdout).toContain(`Attached vm1 (${disk}): nbd+unix:///vm1?socket=${socket}`);
    expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', `nbd+unix:///vm1?socket=${socket}`, plain])).toMatch(/identical/);

    const status = await vmseal(['host', 'status', '--control', control], env);
    expect(status.code, status.stderr).toBe(0);
    const [header, ...rows] = status.stdout.trim().split('\n');
    expect(header).toMatch(/^NAME\s+DISK\s+SIZE\s+ENCRYPTED\s+LOCKED\s+CLIENTS\s+READ\s+WRITTEN$/);
    expect(rows).toHaveLength(2);
    expect(rows[0]).toMatch(new RegExp(`^first\\s+${first}\\s+1.00 MiB\\s+no\\s+no\\s+0/1\\s`));
    expect(rows[1]).toMatch(new RegExp(`^vm1\\s+${disk}\\s+2.00 MiB\\s+yes\\s+no\\s+0/1\\s+2.00 MiB\\s+0 B$`));
    const st = json(await vmseal(['host', 'status', '--control', control, '--json'], env));
    expect(st).toMatchObject({ ok: true, command: 'host status', control, address: { transport: 'unix', path: socket } });
    expect(st.exports.map((e: any) => [e.name, e.encrypted, e.uri])).toEqual([
      ['first', false, `nbd+unix:///first?socket=${socket}`],
      ['vm1', true, `nbd+unix:///vm1?socket=${socket}`],
    ]);

    // Served disks are locked: no job opens one.
    const out = join(dir, 'out.raw');
    const busy = await vmseal(['decrypt', disk, out, '--raw', '--passphrase-file', pwFile], env);
    expect(busy.code).toBe(7);
    const dup = await vmseal(['host', 'attach', first, '--name', 'vm1', '--control', control], env);
    expect(dup.code).toBe(2);
    expect(dup.stderr).toMatch(/cannot attach .*export 'vm1' is already served.*--name/);

    const detach = await vmseal(['host', 'detach', 'vm1', '--control', control, '--json'], env);
    expect(json(detach)).toEqual({ ok: true, command: 'host detach', control, name: 'vm1' });
    // The lock is released: a job opens the disk.
    expect((await vmseal(['decrypt', disk, out, '--raw', '--passphrase-file', pwFile], env)).code).toBe(0);
    expect(readFileSync(out).equals(content)).toBe(true);
    const gone = await vmseal(['host', 'detach', 'vm1', '--control', control], env);
    expect(gone.code).toBe(2);
    expect(gone.stderr).toMatch(/no export is named "vm1".*`vmseal host status` lists the exports/);

    // unlock: the passphrase travels over the socket only; an export that is not locked is refused.
    const unlock = await vmseal(['host', 'unlock', 'first', '--passphrase-file', pwFile, '--control', control], env);
    expect(unlock.code).toBe(1);
    expect(unlock.stderr).toMatch(/cannot unlock first: export first is not locked/);

    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(0);
    expect(existsSync(control)).toBe(false);
    expect(existsSync(`${control}.vmseal-lock`)).toBe(false);
    expect(s.stderr()).not.toContain(PASSPHRASE);
    expect(readFileSync(first).equals(Buffer.alloc(MiB, 7))).toBe(true);
  });

  it('says when no server answers, with a hint, and uses the default control socket in VMSEAL_HOME', async () => {
    const dir = sub('default');
    const none = await vmseal(['host', 'status', '--control', join(dir, 'nothing.sock')], env);
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/nothing answers on the control socket .*nothing\.sock.*Is vmseal serve running\? Give --control/);
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const s = await startServe([a, '--socket', join(dir, 'nbd.sock')]);
    const home = join(served.dir(), 'home');
    expect(s.stderr()).toContain(`vmseal: control socket ${join(home, 'serve.sock')}`);
    const st = json(await vmseal(['host', 'status', '--json'], env));
    expect(st.control).toBe(join(home, 'serve.sock'));
    expect(st.exports.map((e: any) => e.name)).toEqual(['a.raw']);
    s.child.kill('SIGINT');
    expect(await s.exit).toBe(0);
    expect(existsSync(join(home, 'serve.sock'))).toBe(false);
  });

  it('refuses a second server on one control socket, and takes over the socket of a SIGKILLed one', async () => {
    const dir = sub('lock');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const b = plainRaw(dir, 'b', Buffer.alloc(MiB));
    const control = join(dir, 'ctl', 'serve.sock');
    const s = await startServe([a, '--socket', join(dir, 'a.sock'), '--control', control]);
    const second = await vmseal(['serve', b, '--socket', join(dir, 'b.sock'), '--control', control], env);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(
      new RegExp(`control socket ${control} is in use by vmseal \\(pid ${s.child.pid}, serve \\(control socket\\).*--control another path`),
    );
    expect(second.stderr).not.toMatch(/serving/);
    expect(json(await vmseal(['host', 'status', '--control', control, '--json'], env)).exports.map((e: any) => e.name)).toEqual(['a.raw']);

    s.child.kill('SIGKILL');
    await s.exit;
    expect(statSync(control).isSocket()).toBe(true); // left behind
    const again = await startServe([b, '--socket', join(dir, 'b.sock'), '--control', control]);
    expect(json(await vmseal(['host', 'status', '--control', control, '--json'], env)).exports.map((e: any) => e.name)).toEqual(['b.raw']);
    again.child.kill('SIGTERM');
    expect(await again.exit).toBe(0);
  });

  it('exits non-zero when an export cannot be flushed at SIGTERM, and still removes the control socket and releases the locks', async () => {
    const dir = sub('failflush');
    const disk = await encryptedDisk(dir, 'ff', { subformat: 'monolithicFlat', capacity: MiB });
    const control = join(dir, 'ctl', 'serve.sock');
    const flag = join(dir, 'fail-now');
    const preload = fileURLToPath(new URL('../serve/fixtures/fail-sync.mjs', import.meta.url));
    const failing = { ...env, NODE_OPTIONS: `--import ${preload}`, VMSEAL_TEST_FAIL_SYNC: flag };
    const s = await startServe([disk, '--socket', join(dir, 'nbd.sock'), '--control', control, '--passphrase-file', pwFile], failing);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x11 0 4096', `nbd+unix:///ff?socket=${join(dir, 'nbd.sock')}`]);
    writeFileSync(flag, '');
    s.child.kill('SIGTERM');
    expect(await s.exit).toBe(1);
    expect(s.stderr()).toMatch(/export ff: closing failed/);
    expect(existsSync(control)).toBe(false);
    expect(existsSync(`${control}.vmseal-lock`)).toBe(false);
    // The disk's lock is released: a job opens it.
    expect((await vmseal(['verify', disk, '--passphrase-file', pwFile], env)).code).toBe(0);
  });
});
