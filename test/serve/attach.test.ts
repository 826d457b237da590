// NbdHost.attach() and detach() while serving, with real clients: a disk attached is served to new
// clients at once (refused under a name already served); a detached one is flushed, closed and its
// lock released (another job opens it), and its connected clients get their in-flight requests
// answered before the connection closes.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { openDisk, type NbdHost } from '../../src/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, plainRaw, random, run, startHost } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
const hosts: NbdHost[] = [];
beforeAll(() => {
  tmp = tempDir('vmseal-serve-attach-');
});
afterAll(async () => {
  for (const h of hosts) await h.close().catch(() => undefined);
  tmp?.cleanup();
});

function sub(name: string): string {
  const d = join(tmp.dir, name);
  mkdirSync(d);
  return d;
}

async function host(dir: string, disks: Parameters<typeof startHost>[1]): Promise<Awaited<ReturnType<typeof startHost>>> {
  const h = await startHost(dir, disks);
  hosts.push(h.host);
  return h;
}

describe('NbdHost.attach()', () => {
  it('serves a disk attached while running to new clients at once, unlocked with the host keys', async () => {
    const dir = sub('attach');
    const content = random(2 * MiB);
    const plain = plainRaw(dir, 'plain', content);
    const first = plainRaw(dir, 'first', Buffer.alloc(MiB, 1));
    const disk = await encryptedDisk(dir, 'vm2', { subformat: 'monolithicSparse', capacity: 2 * MiB, content });
    const { host: h, socket } = await host(dir, [{ path: first, name: 'first' }]);
    // A client connected before the attach keeps its export.
    const before = await RawClient.connect(socket);
    await before.go('first');

    const info = await h.attach({ path: disk });
    expect(info).toMatchObject({ name: 'vm2', path: disk, size: 2 * MiB, encrypted: true, readOnly: false, clients: 0 });
    expect(h.exports().map((e) => e.name)).toEqual(['first', 'vm2']);
    const nbd = JSON.parse(await run('nbdinfo', ['--json', h.uri('vm2')]));
    expect(nbd.exports[0]['export-size']).toBe(2 * MiB);
    expect(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', h.uri('vm2'), plain])).toMatch(/identical/);
    const r = await before.request(CMD.READ, 0, 512);
    expect(r.data.equals(Buffer.alloc(512, 1))).toBe(true);
    before.close();

    // The name is taken: refused, and the disk of the refused attach is left alone.
    const other = plainRaw(dir, 'other', Buffer.alloc(MiB));
    await expect(h.attach({ path: other, name: 'vm2' })).rejects.toMatchObject({
      code: 'ERR_SERVE_EXPORT',
      message: expect.stringMatching(/'vm2' is already served/),
    });
    await (await acquireLock(other, 'test')).release();
    // The served disk's lock is held: a second attach of it under another name is refused.
    await expect(h.attach({ path: disk, name: 'again' })).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
    // Two attaches of one name at once: the second is refused while the first opens its disk.
    const third = plainRaw(dir, 'third', Buffer.alloc(MiB));
    const racing = h.attach({ path: third, name: 'race' });
    await expect(h.attach({ path: other, name: 'race' })).rejects.toMatchObject({
      code: 'ERR_SERVE_EXPORT',
      message: expect.stringMatching(/'race' is being attached/),
    });
    expect(await racing).toMatchObject({ name: 'race', path: third });
    await h.detach('race');
    await expect(h.attach({ path: '', name: 'x' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(h.attach({ path: other, name: 'a?b' })).rejects.toMatchObject({ code: 'ERR_SERVE_EXPORT' });
    expect(h.exports().map((e) => e.name)).toEqual(['first', 'vm2']);
  });

  it('refuses an attach that cannot unlock the disk, and leaves it unlocked', async () => {
    const dir = sub('wrongkey');
    const first = plainRaw(dir, 'first', Buffer.alloc(MiB));
    const disk = await encryptedDisk(dir, 'locked', { subformat: 'monolithicFlat', capacity: MiB });
    const { host: h } = await startHost(dir, [{ path: first }], { keys: { passphrase: 'not-the-passphrase' } });
    hosts.push(h);
    await expect(h.attach({ path: disk })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    expect(h.exports().map((e) => e.name)).toEqual(['first.raw']);
    await (await acquireLock(disk, 'test')).release();
  });
});

describe('NbdHost.detach()', () => {
  it('flushes, closes and releases the lock: another job opens the disk and finds the writes', async () => {
    const dir = sub('detach');
    const disk = await encryptedDisk(dir, 'vm3', { subformat: 'monolithicFlat', capacity: 2 * MiB });
    const keep = plainRaw(dir, 'keep', Buffer.alloc(MiB));
    const { host: h, lines } = await host(dir, [{ path: disk }, { path: keep, name: 'keep' }]);
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 4096 65536', h.uri('vm3')]);
    await expect(acquireLock(disk, 'test')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });

    await h.detach('vm3');
    expect(h.exports().map((e) => e.name)).toEqual(['keep']);
    expect(lines.some((l) => /export vm3 detached/.test(l))).toBe(true);
    // Gone for clients; the other export is still served.
    await expect(run('nbdinfo', ['--size', h.uri('vm3')])).rejects.toThrow();
    expect((await run('nbdinfo', ['--size', h.uri('keep')])).trim()).toBe(String(MiB));
    // The lock is released and the write is on the disk.
    const d = await openDisk(disk, { keys: KEYS, readOnly: true });
    try {
      const got = Buffer.alloc(65536);
      await d.readInto(4096, got);
      expect(got.equals(Buffer.alloc(65536, 0x5a))).toBe(true);
    } finally {
      await d.close();
    }
    await (await acquireLock(disk, 'test')).release();
    // The name is free again: the disk can be attached anew.
    expect(await h.attach({ path: disk })).toMatchObject({ name: 'vm3' });
    expect((await run('nbdinfo', ['--size', h.uri('vm3')])).trim()).toBe(String(2 * MiB));

    await expect(h.detach('nope')).rejects.toMatchObject({ code: 'ERR_SERVE_NO_EXPORT', message: expect.stringMatching(/"nope".*keep, vm3/) });
  });

  it('answers the requests in flight of a connected client, then closes its connection', async () => {
    const dir = sub('connected');
    const disk = await encryptedDisk(dir, 'busy', { subformat: 'monolithicSparse', capacity: 4 * MiB });
    const { host: h, socket } = await host(dir, [{ path: disk }]);
    const c = await RawClient.connect(socket, { allowHalfOpen: true });
    await c.go('busy');
    const data = Buffer.alloc(64 * 1024, 0xc3);
    // Four writes in one segment; once the first is answered the server has read them all, and
    // detach() comes while the others are in flight (or just answered): each gets its reply.
    c.socket.cork();
    for (let i = 0; i < 4; i++) c.send(CMD.WRITE, i * data.length, data.length, 0, data);
    c.socket.uncork();
    expect((await c.reply()).error).toBe(0);
    const detached = h.detach('busy');
    for (let i = 1; i < 4; i++) expect((await c.reply()).error).toBe(0);
    await detached;
    expect(await c.closedByServer()).toBe(true);
    c.close();
    const d = await openDisk(disk, { keys: KEYS, readOnly: true });
    try {
      const got = Buffer.alloc(4 * data.length);
      await d.readInto(0, got);
      expect(got.equals(Buffer.alloc(4 * data.length, 0xc3))).toBe(true);
    } finally {
      await d.close();
    }
    await (await acquireLock(disk, 'test')).release();
  });

  it('detaches an export while a real client (qemu-io) is connected and idle, and its write is on the disk', async () => {
    const dir = sub('qemuio');
    const disk = await encryptedDisk(dir, 'live', { subformat: 'monolithicFlat', capacity: MiB });
    const { host: h } = await host(dir, [{ path: disk }]);
    // qemu-io writes, then stays connected (its sleep command) until it is killed.
    const client = spawn('qemu-io', ['-f', 'raw', '-c', 'write -P 0x33 0 65536', '-c', 'sleep 600000', h.uri('live')], { stdio: 'ignore' });
    try {
      while (h.exports()[0]!.bytesWritten < 65536) await new Promise((r) => setTimeout(r, 20));
      expect(h.exports()[0]!.clients).toBe(1);
      await h.detach('live');
      expect(h.exports()).toEqual([]);
    } finally {
      client.kill('SIGKILL');
    }
    const d = await openDisk(disk, { keys: KEYS, readOnly: true });
    try {
      const got = Buffer.alloc(65536);
      await d.readInto(0, got);
      expect(got.equals(Buffer.alloc(65536, 0x33))).toBe(true);
    } finally {
      await d.close();
    }
  });

  it('refuses attach and detach once the host is closing', async () => {
    const dir = sub('closing');
    const a = plainRaw(dir, 'a', Buffer.alloc(MiB));
    const b = plainRaw(dir, 'b', Buffer.alloc(MiB));
    const { host: h } = await host(dir, [{ path: a }]);
    const closing = h.close();
    await expect(h.attach({ path: b })).rejects.toMatchObject({ code: 'ERR_SERVE_CLOSED' });
    await expect(h.detach('a.raw')).rejects.toMatchObject({ code: 'ERR_SERVE_CLOSED' });
    await closing;
    await (await acquireLock(b, 'test')).release();
  });
});
