// KMS outage with a real PyKMIP server: exports already open keep serving; a restarted host (empty
// key cache) comes up with the disk locked and refuses its clients with the reason; the disk is
// served as soon as the KMS is back, or when unlock() is given the recovery passphrase; a locked
// export keeps the disk's lock.
//
// Starting PyKMIP takes seconds, so the KMS is stopped once (in the first test) and started again
// once (in the last): the tests between run with it down, and every disk is made beforehand.
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedDisk, KeyCache, serve, type NbdHost, type ServeOptions } from '../../src/index.js';
import { KmipKeyProvider } from '../../src/kmip/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { cleanEnv, vmseal } from '../cli/run-cli.js';
import { startServeProcess, type Served } from '../cli/serve-process.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { random, run, unixUri } from './helpers.js';
import { CMD, OPT, REP_ACK, REP_ERR_UNKNOWN, REP_SERVER, RawClient } from './nbd-client.js';

const MiB = 1 << 20;

const RECOVERY = 'outage-recovery-passphrase';
/** Fast retries: the tests poll exports() and never assert on time. */
const FAST_RETRY = { initialMs: 20, maxMs: 200 };

let kms: PyKmip;
let tmp: ReturnType<typeof tempDir>;
const providers: KmipKeyProvider[] = [];
const hosts: NbdHost[] = [];
let n = 0;
/** The provider that makes the disks, and the one KEK they share (one KMIP Create instead of one per disk). */
let maker: KmipKeyProvider;
let kekId: string;

function provider(): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('kms1'), timeoutMs: 2000 });
  providers.push(p);
  return p;
}

/** A 1 MiB encrypted disk with a KMIP locker and a recovery passphrase locker, and its first MiB of data. */
/** The environment of a `vmseal` child using the test's KMS (its first node), homed in `dir`. */
function kmsEnv(dir: string): NodeJS.ProcessEnv {
  return cleanEnv({
    VMSEAL_HOME: join(dir, 'home'),
    VMSEAL_KMS: `127.0.0.1:${kms.endpoints[0]!.port}`,
    VMSEAL_KMS_CA: kms.caPath,
    VMSEAL_KMS_CERT: kms.clientCertPath,
    VMSEAL_KMS_KEY: kms.clientKeyPath,
    XDG_RUNTIME_DIR: undefined,
  });
}

async function kmipDisk(subformat: 'monolithicSparse' | 'monolithicFlat' = 'monolithicSparse'): Promise<{ path: string; data: Buffer; dir: string }> {
  const dir = join(tmp.dir, `t${++n}`);
  mkdirSync(dir);
  const path = join(dir, 'd.vmdk');
  const data = random(64 * 1024);
  const d = await createEncryptedDisk(path, {
    capacity: MiB,
    subformat,
    lockers: [{ kind: 'provider', provider: maker, keyId: kekId }, phraseLocker(RECOVERY)],
  });
  try {
    await d.write(0, data);
  } finally {
    await d.close();
  }
  return { path, data, dir };
}

async function start(dir: string, opts: Partial<ServeOptions> & Pick<ServeOptions, 'disks'>): Promise<{ host: NbdHost; socket: string; lines: string[] }> {
  const socket = join(dir, `nbd${++n}.sock`);
  const lines: string[] = [];
  const host = await serve({ listen: { socket }, unlockRetry: FAST_RETRY, log: (l) => lines.push(l), ...opts });
  hosts.push(host);
  return { host, socket, lines };
}

/** Poll until `cond` holds (no time limit here: vitest's test timeout is the bound). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
}

/** Option GO (or INFO) of `name`: the final reply's type and message. */
async function choose(socket: string, name: string, option: number = OPT.GO): Promise<{ type: number; message: string; client: RawClient }> {
  const c = await RawClient.connect(socket);
  await c.handshake();
  c.sendOption(option, RawClient.nameData(name));
  const replies = await c.optionReplies();
  const last = replies[replies.length - 1]!;
  return { type: last.type, message: last.data.toString('utf8'), client: c };
}

async function readOver(socket: string, name: string, length: number): Promise<Buffer> {
  const c = await RawClient.connect(socket);
  try {
    await c.go(name);
    const r = await c.request(CMD.READ, 0, length);
    expect(r.error).toBe(0);
    return r.data;
  } finally {
    c.close();
  }
}

type Made = Awaited<ReturnType<typeof kmipDisk>>;
const disks: Record<'attached' | 'restart' | 'noList' | 'unlock' | 'hard' | 'writable' | 'readOnly' | 'cli' | 'hostUnlock' | 'hostAttach', Made> = {} as never;

beforeAll(async () => {
  tmp = tempDir('vmseal-serve-outage-');
  kms = await startPyKmip();
  maker = provider();
  kekId = (await maker.createKey()).keyId;
  disks.attached = await kmipDisk();
  disks.restart = await kmipDisk('monolithicFlat');
  disks.noList = await kmipDisk();
  disks.unlock = await kmipDisk();
  disks.hard = await kmipDisk();
  disks.writable = await kmipDisk();
  disks.readOnly = await kmipDisk();
  disks.cli = await kmipDisk();
  disks.hostUnlock = await kmipDisk();
  disks.hostAttach = await kmipDisk();
}, 60_000);

/** Stop the KMS (like a crash) if it runs. */
async function kmsDown(): Promise<void> {
  if (kms.isRunning(0)) await kms.stopNode(0, { graceMs: 0 });
}

afterEach(async () => {
  for (const h of hosts.splice(0)) await h.close().catch(() => undefined);
});

afterAll(async () => {
  for (const p of providers) await p.close();
  await kms?.stop();
  tmp?.cleanup();
});

describe('KMS outage', () => {
  it('an attached export keeps serving reads and writes with the KMS stopped; a host with the KEK cached opens the disk', async () => {
    const { path, data, dir } = disks.attached;
    const p = provider();
    const cache = new KeyCache();
    const { host, socket } = await start(dir, { disks: [{ path, name: 'd' }], keys: { providers: [p], cache } });
    expect(host.exports()[0]).toMatchObject({ name: 'd', locked: false });
    await kmsDown();

    const c = await RawClient.connect(socket);
    await c.go('d');
    expect((await c.request(CMD.READ, 0, data.length)).data.equals(data)).toBe(true);
    const more = random(8192);
    expect((await c.request(CMD.WRITE, 128 * 1024, more.length, 0, more)).error).toBe(0);
    expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
    expect((await c.request(CMD.READ, 128 * 1024, more.length)).data.equals(more)).toBe(true);
    c.close();
    // A real client too.
    expect(await run('nbdinfo', ['--size', unixUri(socket, 'd')])).toBe(`${MiB}\n`);
    await host.close();

    // Same process, same provider and cache (the KEK is in it): the disk opens with the KMS still down.
    const again = await start(dir, { disks: [{ path, name: 'd' }], keys: { providers: [p], cache } });
    expect(again.host.exports()[0]).toMatchObject({ locked: false });
    expect((await readOver(again.socket, 'd', data.length)).equals(data)).toBe(true);
  });

  it('with --no-list the locked message names no key or provider', async () => {
    const { path, dir } = disks.noList;
    await kmsDown();
    const { host, socket } = await start(dir, { disks: [{ path, name: 'd' }], keys: { providers: [provider()] }, noList: true });
    expect(host.exports()[0]!.lockedReason).toMatch(/of provider kms1/);
    const r = await choose(socket, 'd');
    expect(r.type).toBe(REP_ERR_UNKNOWN);
    expect(r.message).toBe('disk locked');
    r.client.close();
  });

  it('unlock() with the recovery passphrase while the KMS is down; a wrong one leaves it locked', async () => {
    const { path, data, dir } = disks.unlock;
    await kmsDown();
    const { host, socket, lines } = await start(dir, { disks: [{ path, name: 'd' }], keys: { providers: [provider()], cache: new KeyCache() } });
    expect(host.exports()[0]!.locked).toBe(true);

    await expect(host.unlock('d', { passphrase: 'not the recovery passphrase' })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    expect(host.exports()[0]!.locked).toBe(true);
    expect((await choose(socket, 'd')).message).toMatch(/^disk locked: /);
    await expect(host.unlock('nope', { passphrase: RECOVERY })).rejects.toMatchObject({
      code: 'ERR_SERVE_NO_EXPORT',
      message: 'no export is named "nope" (served: d)',
    });

    const info = await host.unlock('d', { passphrase: RECOVERY });
    expect(info).toMatchObject({ name: 'd', locked: false, encrypted: true, size: MiB });
    expect(lines).toContain('export d unlocked with the given keys');
    expect((await readOver(socket, 'd', data.length)).equals(data)).toBe(true);
    await expect(host.unlock('d', { passphrase: RECOVERY })).rejects.toMatchObject({ code: 'ERR_SERVE_NOT_LOCKED' });
    // The retries stopped with the unlock: nothing more is logged about the export being locked.
    const logged = lines.length;
    await new Promise((r) => setTimeout(r, 3 * FAST_RETRY.maxMs));
    expect(lines.slice(logged).filter((l) => l.includes('still locked'))).toEqual([]);
  });

  it('a wrong passphrase is a hard error even with the KMS down: serve() rejects and releases the lock', async () => {
    const { path, dir } = disks.hard;
    await kmsDown();
    const socket = join(dir, 'hard.sock');
    await expect(serve({ disks: [{ path }], listen: { socket }, keys: { providers: [provider()], passphrase: 'wrong' } })).rejects.toMatchObject({
      code: 'ERR_WRONG_KEY',
    });
    // No provider at all for the disk's key is not an outage either.
    await expect(serve({ disks: [{ path }], listen: { socket }, keys: {} })).rejects.toMatchObject({ code: 'ERR_NO_KEY' });
    await (await acquireLock(path, 'test', 'exclusive')).release();
  });

  it('a locked writable export holds the exclusive lock, a locked read-only one the shared lock; close() releases them', async () => {
    const a = disks.writable;
    const b = disks.readOnly;
    await kmsDown();
    const { host } = await start(a.dir, {
      disks: [
        { path: a.path, name: 'w' },
        { path: b.path, name: 'r', readOnly: true },
      ],
      keys: { providers: [provider()] },
    });
    expect(host.exports().map((e) => [e.name, e.locked, e.readOnly])).toEqual([
      ['w', true, false],
      ['r', true, true],
    ]);
    await expect(acquireLock(a.path, 'test', 'shared')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
    await expect(serve({ disks: [{ path: a.path }], listen: { socket: join(a.dir, 'other.sock') }, keys: { passphrase: RECOVERY } })).rejects.toMatchObject({
      code: 'ERR_DISK_BUSY',
    });
    await expect(acquireLock(b.path, 'test', 'exclusive')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
    await (await acquireLock(b.path, 'test', 'shared')).release();
    // The CLI refuses too (exit 7: busy), with the recovery passphrase that would open the disk.
    const pw = join(a.dir, 'pw.txt');
    writeFileSync(pw, RECOVERY, { mode: 0o600 });
    const cli = await vmseal(['decrypt', a.path, join(a.dir, 'plain.img'), '--raw', '--passphrase-file', pw], cleanEnv({ VMSEAL_HOME: join(a.dir, 'home') }));
    expect(cli.code).toBe(7);
    expect(cli.stderr).toMatch(/busy|locked|serve/i);

    await host.close();
    await (await acquireLock(a.path, 'test', 'exclusive')).release();
    await (await acquireLock(b.path, 'test', 'exclusive')).release();
    await expect(host.unlock('w', { passphrase: RECOVERY })).rejects.toMatchObject({ code: 'ERR_SERVE_CLOSED' });
  });
  it('vmseal serve with the KMS down prints the locked export, serves it locked and stops cleanly', async () => {
    const { path, dir } = disks.cli;
    await kmsDown();
    const socket = join(dir, 'cli.sock');
    const env = kmsEnv(dir);
    const children: Served[] = [];
    try {
      const { child, stderr, exit } = await startServeProcess(
        [path, '--name', 'd', '--socket', socket],
        (err) => /^vmseal: serving d on \S+ \(locked: key \S+ of provider kms1 unavailable: .*\)$/m.test(err),
        env,
        children,
      );
      expect(stderr()).toMatch(/^vmseal: export d locked: key \S+ of provider kms1 unavailable: /m);
      const r = await choose(socket, 'd');
      expect(r.message).toMatch(/^disk locked: key \S+ of provider kms1 unavailable: /);
      r.client.close();
      child.kill('SIGTERM');
      expect(await exit).toBe(0);
      await (await acquireLock(path, 'test', 'exclusive')).release();
    } finally {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  });

  it('vmseal host shows the locked export, unlocks it with the recovery passphrase, and attaches and detaches a locked disk', async () => {
    const { path, data, dir } = disks.hostUnlock;
    const other = disks.hostAttach;
    await kmsDown();
    const socket = join(dir, 'host.sock');
    const control = join(dir, 'ctl', 'serve.sock');
    const pw = join(dir, 'pw');
    const wrong = join(dir, 'wrong');
    writeFileSync(pw, `${RECOVERY}\n`, { mode: 0o600 });
    writeFileSync(wrong, 'not the recovery passphrase\n', { mode: 0o600 });
    const env = kmsEnv(dir);
    const host = (...args: string[]) => vmseal(['host', ...args, '--control', control], env);
    const children: Served[] = [];
    try {
      const { child, stderr, exit } = await startServeProcess(
        [path, '--name', 'd', '--socket', socket, '--control', control],
        (err) => /^vmseal: control socket /m.test(err),
        env,
        children,
      );
      const table = await host('status');
      expect(table.code, table.stderr).toBe(0);
      expect(table.stdout).toMatch(/^d\s+\S+\s+1.00 MiB\s+yes\s+yes \(key \S+ of provider kms1 unavailable: .*\)\s+0\/1/m);
      const st = JSON.parse((await host('status', '--json')).stdout);
      expect(st.exports[0]).toMatchObject({ name: 'd', locked: true, lockedReason: expect.stringMatching(/^key \S+ of provider kms1 unavailable: /) });

      // A disk attached while the KMS is down is attached locked; detach releases its lock.
      const attached = await host('attach', other.path, '--name', 'e', '--json');
      expect(attached.code, attached.stderr).toBe(0);
      expect(JSON.parse(attached.stdout).export).toMatchObject({ name: 'e', locked: true });
      await expect(acquireLock(other.path, 'test')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
      expect((await host('detach', 'e')).code).toBe(0);
      await (await acquireLock(other.path, 'test', 'exclusive')).release();

      // unlock: a wrong passphrase is refused (exit 3) and the export stays locked; the right one serves it.
      const refused = await host('unlock', 'd', '--passphrase-file', wrong);
      expect(refused.code).toBe(3);
      expect(JSON.parse((await host('status', '--json')).stdout).exports[0].locked).toBe(true);
      const unlocked = await host('unlock', 'd', '--passphrase-file', pw);
      expect(unlocked.code, unlocked.stderr).toBe(0);
      expect(unlocked.stdout).toContain(`Unlocked d: served on ${unixUri(socket, 'd')}`);
      expect((await readOver(socket, 'd', data.length)).equals(data)).toBe(true);
      expect(JSON.parse((await host('status', '--json')).stdout).exports[0]).toMatchObject({ locked: false });
      const again = await host('unlock', 'd', '--passphrase-file', pw);
      expect(again.code).toBe(1);
      expect(again.stderr).toMatch(/export d is not locked/);

      child.kill('SIGTERM');
      expect(await exit).toBe(0);
      // The passphrase went over the control socket only: never into the server's log.
      expect(stderr()).not.toContain(RECOVERY);
      expect(stderr()).toMatch(/control: unlock d: failed \(ERR_WRONG_KEY\)/);
      expect(stderr()).toMatch(/control: unlock d: done/);
    } finally {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    }
  });

  it('a restarted host with the KMS down comes up locked, refuses clients with the reason, and serves the disk once the KMS is back', async () => {
    const { path, data, dir } = disks.restart;
    await kmsDown();
    // New provider, new cache: an ESXi reboot.
    const { host, socket, lines } = await start(dir, { disks: [{ path, name: 'd' }], keys: { providers: [provider()], cache: new KeyCache() } });
    const [info] = host.exports();
    expect(info).toMatchObject({ name: 'd', locked: true, encrypted: true, size: MiB, sparse: false, readOnly: false, clients: 0 });
    expect(info!.lockedReason).toMatch(/^key \S+ of provider kms1 unavailable: .*ECONNREFUSED/);
    expect(lines.some((l) => l.startsWith('export d locked: key '))).toBe(true);

    const go = await choose(socket, 'd');
    expect(go.type).toBe(REP_ERR_UNKNOWN);
    expect(go.message).toMatch(/^disk locked: key \S+ of provider kms1 unavailable: /);
    go.client.close();
    const infoReply = await choose(socket, 'd', OPT.INFO);
    expect(infoReply.type).toBe(REP_ERR_UNKNOWN);
    expect(infoReply.message).toMatch(/^disk locked: /);
    // The default export ('' with one export) is the locked one too.
    expect((await choose(socket, '')).message).toMatch(/^disk locked: /);
    // LIST still shows it.
    const lister = await RawClient.connect(socket);
    await lister.handshake();
    lister.sendOption(OPT.LIST);
    const listed = await lister.optionReplies();
    expect(listed.filter((r) => r.type === REP_SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString())).toEqual(['d']);
    expect(listed[listed.length - 1]!.type).toBe(REP_ACK);
    // EXPORT_NAME has no error reply: the connection is closed.
    lister.sendOption(OPT.EXPORT_NAME, Buffer.from('d'));
    expect(await lister.closedByServer()).toBe(true);
    // libnbd reports NBD_REP_ERR_UNKNOWN as "no export" (the server's text is in its debug output).
    await expect(run('nbdinfo', ['--size', unixUri(socket, 'd')])).rejects.toThrow(/no export named 'd'/);

    // Clients keep asking while the KMS comes back: each sees the locked export or the open one.
    let stop = false;
    const outcomes = new Set<string>();
    const asking = (async () => {
      while (!stop) {
        const r = await choose(socket, 'd');
        if (r.type === REP_ACK) {
          const got = await r.client.request(CMD.READ, 0, data.length);
          outcomes.add(got.data.equals(data) ? 'served' : 'bad data');
        } else outcomes.add(r.type === REP_ERR_UNKNOWN && r.message.startsWith('disk locked: ') ? 'locked' : `0x${r.type.toString(16)} ${r.message}`);
        r.client.close();
      }
    })();
    await kms.startNode(0);
    await until(() => host.exports()[0]!.locked === false);
    await until(() => outcomes.has('served'));
    stop = true;
    await asking;
    expect([...outcomes].filter((o) => o !== 'locked' && o !== 'served')).toEqual([]);
    expect(lines).toContain('export d unlocked');
    expect(host.exports()[0]).toMatchObject({ locked: false, size: MiB });
    expect(host.exports()[0]!.lockedReason).toBeUndefined();
    expect((await readOver(socket, 'd', data.length)).equals(data)).toBe(true);
    expect(await run('nbdinfo', ['--size', unixUri(socket, 'd')])).toBe(`${MiB}\n`);
  });
});
