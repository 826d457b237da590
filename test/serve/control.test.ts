// The control socket of serve(): where it lives and with which permissions, its JSON-lines wire
// format (ids, order, bounded lines, typed errors), the commands status/attach/detach/unlock, and
// its lock (a second server is refused, a stale socket is taken over, close removes it).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { createConnection, type Socket } from 'node:net';
import { join } from 'node:path';
import { controlRequest, defaultControlPath, serve, type NbdHost } from '../../src/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, plainRaw, random, run, startHost } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
const hosts: NbdHost[] = [];
beforeAll(() => {
  tmp = tempDir('vmseal-serve-control-');
});
afterAll(async () => {
  for (const h of hosts) await h.close().catch(() => undefined);
  tmp?.cleanup();
});

function sub(name: string): string {
  const d = join(tmp.dir, name);
  mkdirSync(d, { mode: 0o700 });
  return d;
}

async function controlled(dir: string, disks: Parameters<typeof startHost>[1]): Promise<{ host: NbdHost; control: string; lines: string[] }> {
  const control = join(dir, 'ctl', 'serve.sock');
  const { host, lines } = await startHost(dir, disks, { control });
  hosts.push(host);
  return { host, control, lines };
}

/**
 * Send raw bytes on a control socket; resolves with the reply lines once `replies` arrived, or with
 * `untilClosed` once the server closed the connection.
 */
function raw(path: string, data: string | Buffer, replies: number, untilClosed = false): Promise<unknown[]> {
  return new Promise((done) => {
    const s = createConnection(path);
    let text = '';
    let finished = false;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      s.destroy();
      done(
        text
          .split('\n')
          .filter((l) => l.length > 0)
          .map((l) => JSON.parse(l) as unknown),
      );
    };
    s.on('data', (d) => {
      text += String(d);
      if (!untilClosed && text.split('\n').length - 1 >= replies) finish();
    });
    s.on('close', finish);
    // EPIPE when the server drops a client still sending: the connection is closed, as asserted.
    s.on('error', finish);
    s.write(data);
  });
}

/** Poll until `cond` resolves true (vitest's test timeout is the bound). */
async function until(cond: () => Promise<boolean>): Promise<void> {
  while (!(await cond())) await new Promise((r) => setTimeout(r, 20));
}

describe('control socket', () => {
  it('defaults to $XDG_RUNTIME_DIR/vmseal/serve.sock, else <home>/serve.sock', () => {
    expect(defaultControlPath('/h', { XDG_RUNTIME_DIR: '/run/user/7' })).toBe('/run/user/7/vmseal/serve.sock');
    expect(defaultControlPath('/h', {})).toBe('/h/serve.sock');
  });

  it('is a 0600 socket in a private folder and runs status, attach, detach and unlock', async () => {
    const dir = sub('commands');
    const content = random(MiB);
    const a = plainRaw(dir, 'a', content);
    const b = await encryptedDisk(dir, 'b', { subformat: 'monolithicFlat', capacity: 2 * MiB, content });
    const { host, control, lines } = await controlled(dir, [{ path: a, name: 'a' }]);
    expect(host.controlPath()).toBe(control);
    expect(statSync(control).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, 'ctl')).mode & 0o777).toBe(0o700);

    const status = (await controlRequest(control, { command: 'status' })) as any;
    expect(status.address).toEqual(host.address());
    expect(status.exports).toEqual([expect.objectContaining({ name: 'a', path: a, size: MiB, encrypted: false, uri: host.uri('a'), clients: 0 })]);

    const attached = (await controlRequest(control, { command: 'attach', path: b, readOnly: true })) as any;
    expect(attached).toMatchObject({ name: 'b', encrypted: true, readOnly: true, uri: host.uri('b') });
    expect((await run('nbdinfo', ['--size', host.uri('b')])).trim()).toBe(String(2 * MiB));
    expect(host.exports().map((e) => e.name)).toEqual(['a', 'b']);

    // Errors of the layers come back with their code and message.
    await expect(controlRequest(control, { command: 'attach', path: b, name: 'a' })).rejects.toMatchObject({
      code: 'ERR_SERVE_EXPORT',
      message: expect.stringMatching(/'a' is already served/),
    });
    await expect(controlRequest(control, { command: 'attach', path: join(dir, 'missing.vmdk') })).rejects.toMatchObject({
      code: expect.stringMatching(/^E|^ERR_/),
    });
    await expect(controlRequest(control, { command: 'detach', name: 'zz' })).rejects.toMatchObject({ code: 'ERR_SERVE_NO_EXPORT' });
    await expect(controlRequest(control, { command: 'unlock', name: 'b', passphrase: 'secret-passphrase-1' })).rejects.toMatchObject({
      code: 'ERR_SERVE_NOT_LOCKED',
    });

    expect(await controlRequest(control, { command: 'detach', name: 'b' })).toEqual({ name: 'b' });
    expect(host.exports().map((e) => e.name)).toEqual(['a']);
    await (await acquireLock(b, 'test')).release();
    // One log line per command, never the passphrase.
    expect(lines).toContain(`control: attach ${b}: done`);
    expect(lines).toContain('control: detach b: done');
    expect(lines.some((l) => /control: unlock b: failed \(ERR_SERVE_NOT_LOCKED\)/.test(l))).toBe(true);
    expect(lines.join('\n')).not.toContain('secret-passphrase-1');
  });

  it('answers JSON lines in order with their ids, and refuses bad requests with typed errors', async () => {
    const dir = sub('wire');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const { control } = await controlled(dir, [{ path: a, name: 'a' }]);
    const requests = [
      '{"id":1,"command":"status"}',
      'not json',
      '{"id":"x","command":"reboot"}',
      '{"id":3,"command":"detach"}',
      '{"id":{"no":1},"command":"status"}',
      '[1,2]',
      '',
      '{"id":4,"command":"attach","path":"/x","readOnly":"yes"}',
      '{"id":5,"command":"status"}',
    ];
    const lines = await raw(control, requests.join('\n') + '\n', 8);
    expect(lines).toEqual([
      { id: 1, ok: true, result: expect.objectContaining({ exports: [expect.objectContaining({ name: 'a' })] }) },
      { id: null, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/not JSON/) } },
      {
        id: 'x',
        ok: false,
        error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/unknown control command 'reboot'.*status, attach, detach, unlock/) },
      },
      { id: 3, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/for name of detach/) } },
      { id: null, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/for id/) } },
      { id: null, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/JSON object/) } },
      { id: 4, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/a boolean for readOnly/) } },
      { id: 5, ok: true, result: expect.anything() },
    ]);
  });

  it('answers a line longer than 64 KiB with ERR_SERVE_REQUEST and closes the connection, and keeps serving others', async () => {
    const dir = sub('long');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const { control } = await controlled(dir, [{ path: a, name: 'a' }]);
    // No newline at all: the server must not buffer it to the end.
    // Resolves only once the server closed the connection.
    const lines = await raw(control, Buffer.alloc(200 * 1024, 0x61), 1, true);
    expect(lines).toEqual([{ id: null, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/longer than 65536 bytes/) } }]);
    expect(await controlRequest(control, { command: 'status' })).toMatchObject({ exports: [expect.objectContaining({ name: 'a' })] });
  });

  it('serves at most 16 control connections at once: one more is answered with an error and closed', async () => {
    const dir = sub('many');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const { control } = await controlled(dir, [{ path: a, name: 'a' }]);
    const idle: Socket[] = [];
    try {
      for (let i = 0; i < 16; i++) {
        const s = createConnection(control);
        await new Promise((ok) => s.once('connect', ok));
        idle.push(s);
      }
      // Each of them is served: a status on the last one answers.
      idle[15]!.write('{"id":1,"command":"status"}\n');
      await new Promise((ok) => idle[15]!.once('data', ok));
      const lines = await raw(control, '{"command":"status"}\n', 1, true);
      expect(lines).toEqual([
        { id: null, ok: false, error: { code: 'ERR_SERVE_REQUEST', message: expect.stringMatching(/more than 16 control connections/) } },
      ]);
    } finally {
      for (const s of idle) s.destroy();
    }
    // Once they are gone, new connections are served again.
    await until(
      async () =>
        await controlRequest(control, { command: 'status' }).then(
          () => true,
          () => false,
        ),
    );
  });

  it('is held by one server: a second is refused naming the holder, a stale socket is taken over, close removes it', async () => {
    const dir = sub('lock');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const b = plainRaw(dir, 'b', Buffer.alloc(MiB));
    const { host, control } = await controlled(dir, [{ path: a, name: 'a' }]);
    await expect(serve({ disks: [{ path: b }], listen: { socket: join(dir, 'other.sock') }, control })).rejects.toMatchObject({
      code: 'ERR_SERVE_CONTROL',
      message: expect.stringContaining(`control socket ${control} is in use by vmseal (pid ${process.pid}`),
    });
    // The refused server opened nothing, and the first one still answers.
    await (await acquireLock(b, 'test')).release();
    expect(await controlRequest(control, { command: 'status' })).toMatchObject({ exports: [expect.objectContaining({ name: 'a' })] });
    await host.close();
    expect(existsSync(control)).toBe(false);
    expect(existsSync(`${control}.vmseal-lock`)).toBe(false);
    await expect(controlRequest(control, { command: 'status' })).rejects.toMatchObject({
      code: 'ERR_SERVE_NO_SERVER',
      message: expect.stringContaining(control),
    });

    // A socket file whose process died (no lock holder) is taken over.
    await run('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(control)})`]);
    expect(statSync(control).isSocket()).toBe(true);
    await expect(controlRequest(control, { command: 'status' })).rejects.toMatchObject({ code: 'ERR_SERVE_NO_SERVER' });
    const again = await serve({ disks: [{ path: b }], listen: { socket: join(dir, 'other.sock') }, control, keys: KEYS });
    hosts.push(again);
    expect(await controlRequest(control, { command: 'status' })).toMatchObject({ exports: [expect.objectContaining({ name: 'b.raw' })] });
    await again.close();
  });

  it('refuses a control folder others can enter, and a file that is not a socket', async () => {
    const dir = sub('perm');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const open = join(dir, 'open');
    mkdirSync(open, { mode: 0o755 });
    await expect(serve({ disks: [{ path: a }], listen: { socket: join(dir, 'n.sock') }, control: join(open, 's.sock') })).rejects.toMatchObject({
      code: 'ERR_SERVE_CONTROL',
      message: expect.stringMatching(/is not private/),
    });
    await expect(serve({ disks: [{ path: a }], listen: { socket: join(dir, 'n.sock') }, control: a })).rejects.toMatchObject({
      code: 'ERR_SERVE_CONTROL',
      message: expect.stringMatching(/not a socket/),
    });
    await (await acquireLock(a, 'test')).release();
  });
});
