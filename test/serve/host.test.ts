// serve() as a library: where it listens and with which permissions, what it refuses, and that a
// failed start leaves no disk open or locked.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { serve, ServeError, defaultExportName, exportUri } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, plainRaw, run, unixUri } from './helpers.js';
import { RawClient } from './nbd-client.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-host-');
});
afterAll(() => tmp?.cleanup());

function sub(name: string): string {
  const d = join(tmp.dir, name);
  mkdirSync(d);
  return d;
}

describe('serve()', () => {
  it('listens by default on a 0600 socket in a private folder of XDG_RUNTIME_DIR', async () => {
    const dir = sub('default');
    const runtime = join(dir, 'run');
    mkdirSync(runtime, { mode: 0o755 });
    const disk = plainRaw(dir, 'd', Buffer.alloc(MiB));
    const saved = process.env.XDG_RUNTIME_DIR;
    process.env.XDG_RUNTIME_DIR = runtime;
    try {
      const host = await serve({ disks: [{ path: disk }] });
      try {
        const addr = host.address();
        expect(addr).toEqual({ transport: 'unix', path: join(runtime, 'vmseal', 'nbd.sock') });
        expect(statSync(join(runtime, 'vmseal')).mode & 0o777).toBe(0o700);
        expect(statSync(join(runtime, 'vmseal', 'nbd.sock')).mode & 0o777).toBe(0o600);
        expect(host.uri('d.raw')).toBe(`nbd+unix:///d.raw?socket=${join(runtime, 'vmseal', 'nbd.sock')}`);
        expect(JSON.parse(await run('nbdinfo', ['--json', host.uri('d.raw')])).exports[0]['export-size']).toBe(MiB);
      } finally {
        await host.close();
      }
      // A default folder that others can enter is refused.
      chmodSync(join(runtime, 'vmseal'), 0o755);
      await expect(serve({ disks: [{ path: disk }] })).rejects.toMatchObject({ code: 'ERR_SERVE_LISTEN', message: expect.stringMatching(/is not private/) });
    } finally {
      if (saved === undefined) delete process.env.XDG_RUNTIME_DIR;
      else process.env.XDG_RUNTIME_DIR = saved;
    }
  });

  it('replaces a stale socket file and refuses one a server listens on', async () => {
    const dir = sub('stale');
    const disk = plainRaw(dir, 'd', Buffer.alloc(MiB));
    const socket = join(dir, 's.sock');
    const other = createServer();
    await new Promise<void>((r) => other.listen(socket, r));
    await expect(serve({ disks: [{ path: disk }], listen: { socket } })).rejects.toMatchObject({
      code: 'ERR_SERVE_LISTEN',
      message: expect.stringMatching(/another server is listening/),
    });
    await new Promise<void>((r) => other.close(() => r()));
    // A socket file nobody listens on, as a killed server leaves it (Node removes its own on close).
    await run('python3', ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])', socket]);
    expect(statSync(socket).isSocket()).toBe(true);
    const host = await serve({ disks: [{ path: disk }], listen: { socket } });
    await host.close();
  });

  it('refuses bad options with typed errors', async () => {
    const dir = sub('bad');
    const disk = plainRaw(dir, 'd', Buffer.alloc(MiB));
    await expect(serve({ disks: [] })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(serve({ disks: [{ path: disk }], listen: { host: '0.0.0.0', port: 0 } })).rejects.toMatchObject({
      code: 'ERR_SERVE_INSECURE',
      message: expect.stringMatching(/not a loopback address/),
    });
    await expect(
      serve({
        disks: [
          { path: disk, name: 'x' },
          { path: disk, name: 'x' },
        ],
        listen: { socket: join(dir, 's') },
      }),
    ).rejects.toMatchObject({
      code: 'ERR_SERVE_EXPORT',
    });
    await expect(serve({ disks: [{ path: disk, name: 'a?b' }], listen: { socket: join(dir, 's') } })).rejects.toBeInstanceOf(ServeError);
    await expect(serve({ disks: [{ path: disk }], listen: { host: '127.0.0.1', port: 70000 } })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(serve({ disks: [{ path: disk }], listen: { socket: join(dir, 's') }, unlockRetry: { initialMs: 0 } })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: 'Expected a positive integer for unlockRetry.initialMs but received 0 of type number',
    });
    await expect(serve({ disks: [{ path: disk }], listen: { socket: join(dir, 's') }, unlockRetry: { initialMs: 500, maxMs: 100 } })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: 'Expected a number of ms of at least unlockRetry.initialMs (500) for unlockRetry.maxMs but received 100 of type number',
    });
    await expect(serve({ disks: [{ path: disk }], listen: { socket: join(dir, 's') }, stallTimeoutMs: 1.5 })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: 'Expected a positive integer for stallTimeoutMs but received 1.5 of type number',
    });
  });

  it('a disk that cannot be opened leaves the others unlocked and closed', async () => {
    const dir = sub('fail');
    const good = await encryptedDisk(dir, 'good', { subformat: 'monolithicSparse', capacity: MiB });
    const wrong = await encryptedDisk(dir, 'wrong', { subformat: 'monolithicSparse', capacity: MiB });
    const socket = join(dir, 's.sock');
    let calls = 0;
    const keys = async (path: string) => (++calls, path === wrong ? { passphrase: 'not the passphrase' } : KEYS);
    await expect(serve({ disks: [{ path: good }, { path: wrong }], listen: { socket }, keys })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    expect(calls).toBe(2);
    // The first disk's exclusive lock was released: it can be served (locked exclusively) again.
    const host = await serve({ disks: [{ path: good }], listen: { socket }, keys: KEYS });
    try {
      expect(host.exports()).toMatchObject([{ name: 'good', encrypted: true, readOnly: false, sparse: true, clients: 0, shared: 1 }]);
      // …and while it is served, nobody else can take it.
      await expect(serve({ disks: [{ path: good }], listen: { socket: join(dir, 't.sock') }, keys: KEYS })).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
      expect(await run('nbdinfo', ['--size', unixUri(socket, 'good')])).toBe(`${MiB}\n`);
    } finally {
      await host.close();
    }
  });

  it('close() returns while clients keep their connections open, idle or mid-negotiation', async () => {
    const dir = sub('open');
    const disk = plainRaw(dir, 'o', Buffer.alloc(MiB));
    const socket = join(dir, 's.sock');
    const host = await serve({ disks: [{ path: disk, name: 'o', shared: 4 }], listen: { socket } });
    const idle = await RawClient.connect(socket, { allowHalfOpen: true }); // greeted, never answers
    const negotiating = await RawClient.connect(socket, { allowHalfOpen: true });
    await negotiating.handshake();
    const serving = await RawClient.connect(socket, { allowHalfOpen: true });
    await serving.go('o');
    // A client that floods options without reading the replies (the server's writes block).
    const flooding = await RawClient.connect(socket, { allowHalfOpen: true });
    await flooding.handshake();
    flooding.socket.pause();
    const list = Buffer.alloc(16);
    list.write('IHAVEOPT', 0, 'ascii');
    list.writeUInt32BE(3, 8);
    for (let i = 0; i < 20000; i++) flooding.write(list);
    await new Promise((r) => setTimeout(r, 50)); // let the server fill its side (not an assertion)
    // None of them closes its side: close() must not wait for them.
    await host.close();
    for (const c of [idle, negotiating, serving]) expect(await c.closedByServer()).toBe(true);
    flooding.close();
  });

  it('disconnects a client that does not choose an export in time, not one that did', async () => {
    const dir = sub('timeout');
    const disk = plainRaw(dir, 'h', Buffer.alloc(MiB, 9));
    const socket = join(dir, 's.sock');
    const lines: string[] = [];
    const host = await serve({ disks: [{ path: disk, name: 'h', shared: 2 }], listen: { socket }, handshakeTimeoutMs: 200, log: (l) => lines.push(l) });
    try {
      const serving = await RawClient.connect(socket);
      await serving.go('h');
      const idle = await RawClient.connect(socket, { allowHalfOpen: true });
      await idle.handshake();
      expect(await idle.closedByServer()).toBe(true);
      expect(lines.some((l) => /closed: no export chosen within 200 ms/.test(l))).toBe(true);
      // Past the same delay, the client that chose an export is still served.
      const r = await serving.request(0, 0, 512);
      expect(r.data.equals(Buffer.alloc(512, 9))).toBe(true);
      serving.close();
    } finally {
      await host.close();
    }
  });

  it('names exports and URIs', () => {
    expect(defaultExportName('/x/vm1.vmdk')).toBe('vm1');
    expect(defaultExportName('/x/disk.img')).toBe('disk.img');
    expect(exportUri({ transport: 'tcp', host: '::1', port: 10809 }, 'a b')).toBe('nbd://[::1]:10809/a%20b');
    expect(exportUri({ transport: 'unix', path: '/run/s' }, 'vm')).toBe('nbd+unix:///vm?socket=/run/s');
  });
});
