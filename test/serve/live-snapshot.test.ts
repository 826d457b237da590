// `NbdHost.snapshot` (vmseal host snapshot): a snapshot of a served disk taken while a client keeps
// writing at queue depth 8 and another keeps reading. The parent holds every write acknowledged
// before the snapshot was asked for and none sent after it was taken; the export serves all of them;
// qemu-img sees the chain; a restarted server serves the same content; the errors leave the export
// serving its old disk.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { controlRequest, createEncryptedDisk, KmipError, openDisk, serve, type KeyProvider, type KeyRef, type NbdHost } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { acquireFileLock, lockRecordPathFor } from '../../src/util/lock.js';
import { cleanEnv, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, PASSPHRASE, plaintextOf, random, run, startHost, unixUri } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
const BLOCK = 64 * KiB;
/** The writer's blocks start here; [0, FIRST) holds content written before serving. */
const FIRST = MiB;
const BLOCKS = 192;
const CAPACITY = FIRST + BLOCKS * BLOCK + MiB;
const QD = 8;

let tmp: ReturnType<typeof tempDir>;
let n = 0;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-livesnap-');
});
afterAll(() => tmp?.cleanup());

function sub(): string {
  return join(tmp.dir, String(++n));
}

/** What the writer saw: blocks acknowledged before the snapshot was asked for, and the first block sent after it was taken. */
interface WriterLog {
  ackedBefore: Set<number>;
  firstSentAfter: number;
  patterns: Buffer[];
  snapshot: Awaited<ReturnType<NbdHost['snapshot']>>;
}

/**
 * Write BLOCKS distinct random blocks at queue depth QD; once a third of them are acknowledged, ask
 * for the snapshot (not awaited: the writer goes on). Meanwhile a second connection reads the content
 * at [0, FIRST) over and over and checks it.
 */
async function writeThroughSnapshot(host: NbdHost, socket: string, name: string, before: Buffer, snapName?: string): Promise<WriterLog> {
  const writer = await RawClient.connect(socket);
  const reader = await RawClient.connect(socket);
  try {
    await writer.go(name);
    await reader.go(name);
    const patterns = Array.from({ length: BLOCKS }, () => randomBytes(BLOCK));
    const acked = new Set<number>();
    let ackedBefore: Set<number> | undefined;
    let firstSentAfter = -1;
    let snapshot: Promise<WriterLog['snapshot']> | undefined;
    let sent = 0;
    let writing = true;
    const reading = (async () => {
      let reads = 0;
      while (writing || reads < 4) {
        const at = (reads++ * BLOCK) % FIRST;
        const r = await reader.request(CMD.READ, at, BLOCK);
        expect(r.error).toBe(0);
        expect(r.data.equals(before.subarray(at, at + BLOCK))).toBe(true);
      }
      return reads;
    })();
    const cookies = new Map<bigint, number>();
    while (acked.size < BLOCKS) {
      while (sent < BLOCKS && sent - acked.size < QD) {
        cookies.set(writer.send(CMD.WRITE, FIRST + sent * BLOCK, BLOCK, 0, patterns[sent]), sent);
        sent++;
      }
      const r = await writer.reply();
      expect(r.error).toBe(0);
      acked.add(cookies.get(r.cookie)!);
      if (acked.size === BLOCKS / 3 && !snapshot) {
        ackedBefore = new Set(acked);
        snapshot = host.snapshot(name, snapName !== undefined ? { name: snapName } : {}).then((s) => {
          firstSentAfter = sent;
          return s;
        });
      }
    }
    writing = false;
    expect(await reading).toBeGreaterThan(0);
    const taken = await snapshot!;
    expect(firstSentAfter).toBeLessThan(BLOCKS); // some writes went to the new top only after the switch
    return { ackedBefore: ackedBefore!, firstSentAfter, patterns, snapshot: taken };
  } finally {
    writer.close();
    reader.close();
  }
}

/** The content expected of the chain: `before`, then every block written. */
function expectedContent(before: Buffer, patterns: Buffer[]): Buffer {
  const out = Buffer.alloc(CAPACITY);
  before.copy(out, 0);
  patterns.forEach((p, i) => p.copy(out, FIRST + i * BLOCK));
  return out;
}

/** The parent (read on its own) holds the acknowledged-before blocks and none sent after the switch; the rest of them are zeros or the block. */
function checkParent(parent: Buffer, before: Buffer, w: WriterLog): void {
  expect(parent.subarray(0, FIRST).equals(before)).toBe(true);
  const zeros = Buffer.alloc(BLOCK);
  let inParent = 0;
  for (let i = 0; i < BLOCKS; i++) {
    const got = parent.subarray(FIRST + i * BLOCK, FIRST + (i + 1) * BLOCK);
    if (w.ackedBefore.has(i)) expect(got.equals(w.patterns[i]!), `block ${i} acknowledged before the snapshot`).toBe(true);
    else if (i >= w.firstSentAfter) expect(got.equals(zeros), `block ${i} sent after the snapshot`).toBe(true);
    else expect(got.equals(w.patterns[i]!) || got.equals(zeros), `block ${i} in flight`).toBe(true);
    if (got.equals(w.patterns[i]!)) inParent++;
  }
  expect(inParent).toBeGreaterThanOrEqual(w.ackedBefore.size);
  expect(inParent).toBeLessThan(BLOCKS);
}

async function readExport(uri: string, dir: string): Promise<Buffer> {
  const out = join(dir, `read-${++n}.raw`);
  await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, out]);
  return readFileSync(out);
}

function backingChain(top: string): Promise<Array<{ filename: string; 'backing-filename'?: string }>> {
  return run('qemu-img', ['info', '--backing-chain', '--output=json', '-f', 'vmdk', top]).then((s) => JSON.parse(s) as Array<{ filename: string }>);
}

describe('live snapshot of a served disk', () => {
  it('encrypted flat disk: writes at queue depth 8 never fail, the parent freezes at the snapshot, the export and a restarted server serve every write', async () => {
    const dir = sub();
    mkdirSync(dir);
    const before = random(FIRST);
    const base = await encryptedDisk(dir, 'vm', { subformat: 'monolithicFlat', capacity: CAPACITY, content: before });
    const { host, socket, lines } = await startHost(dir, [{ path: base, name: 'vm', shared: 2 }]);
    let w: WriterLog;
    const expected = (): Buffer => expectedContent(before, w.patterns);
    try {
      w = await writeThroughSnapshot(host, socket, 'vm', before);
      const top = join(dir, 'vm-000001.vmdk');
      expect(w.snapshot).toMatchObject({ name: 'vm', path: top, parent: base, encrypted: true, sparse: true, locked: false });
      expect(host.exports()[0]!.path).toBe(top);
      expect(statSync(base).mode & 0o222).toBe(0);
      expect(lines).toContain(`export vm: snapshot taken: ${base} frozen, serving ${top}`);
      expect((await readExport(unixUri(socket, 'vm'), dir)).equals(expected())).toBe(true);
    } finally {
      await host.close();
    }
    const top = join(dir, 'vm-000001.vmdk');
    checkParent(await plaintextOf(base), before, w);
    expect((await plaintextOf(top)).equals(expected())).toBe(true);
    const chain = await backingChain(top);
    expect(chain.map((l) => l.filename)).toEqual([top, base]);

    // A server started on the new top serves the same content.
    const again = await startHost(dir, [{ path: top, name: 'vm' }]);
    try {
      expect((await readExport(unixUri(again.socket, 'vm'), dir)).equals(expected())).toBe(true);
    } finally {
      await again.host.close();
    }
  });

  it('plain sparse disk made by qemu-img: the parent holds what was acknowledged before; qemu-img sees and reads the chain', async () => {
    const dir = sub();
    mkdirSync(dir);
    const base = join(dir, 'plain.vmdk');
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', base, String(CAPACITY)]);
    const before = random(FIRST);
    const { host, socket } = await startHost(dir, [{ path: base, name: 'p', shared: 2 }]);
    // The content before the writer starts: random bytes, which qemu-io cannot write, so through the server.
    const c = await RawClient.connect(socket);
    await c.go('p');
    expect((await c.request(CMD.WRITE, 0, FIRST, 0, before)).error).toBe(0);
    c.close();
    let w: WriterLog;
    try {
      w = await writeThroughSnapshot(host, socket, 'p', before, 'plain-snap1');
      expect(w.snapshot).toMatchObject({ path: join(dir, 'plain-snap1.vmdk'), parent: base, encrypted: false });
    } finally {
      await host.close();
    }
    const top = join(dir, 'plain-snap1.vmdk');
    const chain = await backingChain(top);
    expect(chain.map((l) => l.filename)).toEqual([top, base]);
    expect(chain[0]!['backing-filename']).toBe('plain.vmdk');
    const parentRaw = join(dir, 'parent.raw');
    await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', base, parentRaw]);
    checkParent(readFileSync(parentRaw), before, w);
    const topRaw = join(dir, 'top.raw');
    await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', top, topRaw]);
    expect(readFileSync(topRaw).equals(expectedContent(before, w.patterns))).toBe(true);
    expect(await run('qemu-img', ['check', '-f', 'vmdk', top])).toMatch(/No errors/);
  });
});

/** A key provider whose KMS can be taken down (as an unreachable KMIP cluster fails). */
class SwitchableKms implements KeyProvider {
  readonly id = 'snapkms';
  readonly #keys = new Map<string, Buffer>();
  down = false;
  gets = 0;
  async createKey(): Promise<KeyRef> {
    const keyId = `k${this.#keys.size + 1}`;
    this.#keys.set(keyId, randomBytes(32));
    return { providerId: this.id, keyId };
  }
  async getKey(keyId: string): Promise<Buffer> {
    this.gets++;
    if (this.down)
      throw new KmipError('ERR_KMS_UNAVAILABLE', 'KMIP Get: no KMS node answered (1 tried): could not connect to 127.0.0.1:5696 [ERR_KMIP_CONNECT]');
    return Buffer.from(this.#keys.get(keyId)!);
  }
  async destroyKey(keyId: string): Promise<void> {
    this.#keys.delete(keyId);
  }
}

describe('live snapshot errors', () => {
  it('unknown, read-only and locked exports are refused with their codes', async () => {
    const dir = sub();
    mkdirSync(dir);
    const kms = new SwitchableKms();
    const lockedPath = join(dir, 'locked.vmdk');
    const d = await createEncryptedDisk(lockedPath, { capacity: MiB, subformat: 'monolithicSparse', lockers: [{ kind: 'provider', provider: kms }] });
    await d.close();
    kms.down = true;
    const ro = await encryptedDisk(dir, 'ro', { subformat: 'monolithicSparse', capacity: MiB, content: random(4096) });
    const socket = join(dir, 'nbd.sock');
    const host = await serve({
      disks: [
        { path: lockedPath, name: 'locked' },
        { path: ro, name: 'ro', readOnly: true },
      ],
      listen: { socket },
      keys: (path) => Promise.resolve(path === lockedPath ? { providers: [kms] } : KEYS),
      unlockRetry: { initialMs: 60_000 },
    });
    try {
      await expect(host.snapshot('nope')).rejects.toMatchObject({ code: 'ERR_SERVE_NO_EXPORT', message: expect.stringMatching(/no export is named "nope"/) });
      await expect(host.snapshot('ro')).rejects.toMatchObject({
        code: 'ERR_SERVE_READ_ONLY',
        message: expect.stringMatching(/export ro: it is served read-only/),
      });
      await expect(host.snapshot('locked')).rejects.toMatchObject({
        code: 'ERR_SERVE_LOCKED',
        message: expect.stringMatching(/export locked: it is locked \(key k1 of provider snapkms unavailable.*vmseal host unlock/),
      });
      expect(existsSync(join(dir, 'ro-000001.vmdk'))).toBe(false);
      expect(existsSync(join(dir, 'locked-000001.vmdk'))).toBe(false);
    } finally {
      await host.close();
    }
    await expect(host.snapshot('ro')).rejects.toMatchObject({ code: 'ERR_SERVE_CLOSED' });
  });

  it('a snapshot that fails leaves the export serving its old disk, writable, unchanged and locked', async () => {
    const dir = sub();
    mkdirSync(dir);
    const kms = new SwitchableKms();
    const path = join(dir, 'vm.vmdk');
    const d = await createEncryptedDisk(path, { capacity: 4 * MiB, subformat: 'monolithicSparse', lockers: [{ kind: 'provider', provider: kms }] });
    await d.close();
    const descriptorBefore = readFileSync(path);
    const socket = join(dir, 'nbd.sock');
    const lines: string[] = [];
    const host = await serve({
      disks: [{ path, name: 'vm' }],
      listen: { socket },
      keys: { providers: [kms] },
      log: (l) => lines.push(l),
    });
    const uri = unixUri(socket, 'vm');
    try {
      // 1. The key provider is down: nothing is made, the disk is not even rewritten.
      kms.down = true;
      await expect(host.snapshot('vm')).rejects.toMatchObject({ code: 'ERR_DISK_LOCKED' });
      expect(readFileSync(path).equals(descriptorBefore)).toBe(true);
      kms.down = false;
      // 2. A child name that is taken: the disk is writable again, nothing else is made.
      writeFileSync(join(dir, 'taken.vmdk'), 'not mine');
      await expect(host.snapshot('vm', { name: 'taken' })).rejects.toMatchObject({ code: 'ERR_VMDK_EXISTS' });
      expect(readFileSync(join(dir, 'taken.vmdk'), 'utf8')).toBe('not mine');
      // 3. The child is made but cannot be locked (another process holds its name's lock): removed,
      // the parent writable and locked exclusively again (its lock was traded for a shared one).
      const child = join(dir, 'vm-000001.vmdk');
      const blocker = await acquireFileLock(lockRecordPathFor(child), { mode: 'exclusive', record: { operation: 'test' } });
      await expect(host.snapshot('vm')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
      blocker.release();
      expect(existsSync(join(dir, 'vm-000001.vmdk'))).toBe(false);
      expect(lines.filter((l) => /could not be locked again|undoing the snapshot/.test(l))).toEqual([]);
      // Still the old disk, writable through NBD.
      expect(host.exports()[0]).toMatchObject({ path, locked: false });
      expect(statSync(path).mode & 0o200).toBe(0o200);
      await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 65536 65536', uri]);
      expect(await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x3c 65536 65536', uri])).toMatch(/read 65536\/65536/);
      // Its lock is held again: no job takes the disk.
      await expect(acquireLock(path, 'test')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
      // 4. And a snapshot that works now: the KEK is fetched once (no cache here), before writes wait.
      const gets = kms.gets;
      const ok = await host.snapshot('vm');
      expect(ok.path).toBe(join(dir, 'vm-000001.vmdk'));
      expect(kms.gets - gets).toBe(1);
    } finally {
      await host.close();
    }
    const plain = await openDisk(join(dir, 'vm-000001.vmdk'), { keys: { providers: [kms] }, readOnly: true });
    try {
      const got = await plain.read(65536, 65536);
      expect(got.equals(Buffer.alloc(65536, 0x3c))).toBe(true);
    } finally {
      await plain.close();
    }
  });

  it('vmseal snapshot create refuses a served disk and leaves its descriptor as it was', async () => {
    const dir = sub();
    mkdirSync(dir);
    const disk = await encryptedDisk(dir, 'served', { subformat: 'monolithicSparse', capacity: MiB, content: random(4096) });
    const pwFile = join(dir, 'pw');
    writeFileSync(pwFile, PASSPHRASE, { mode: 0o600 });
    const { host } = await startHost(dir, [{ path: disk, name: 'served' }]);
    try {
      const before = readFileSync(disk);
      const r = await vmseal(['snapshot', 'create', disk, '--passphrase-file', pwFile], cleanEnv());
      expect(r.code, r.stderr).toBe(7);
      expect(r.stderr).toMatch(/^vmseal: cannot take a snapshot of \S*served\.vmdk: \S*served\.vmdk is in use by vmseal \(pid \d+, serve since/);
      // Not even upgraded to a layer: the server's disk was not written behind its back.
      expect(readFileSync(disk).equals(before)).toBe(true);
      expect(existsSync(join(dir, 'served-000001.vmdk'))).toBe(false);
    } finally {
      await host.close();
    }
    // Once it is no longer served, the same command works.
    const r = await vmseal(['snapshot', 'create', disk, '--passphrase-file', pwFile], cleanEnv());
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout.trim()).toBe(join(dir, 'served-000001.vmdk'));
  });

  it('detach and close during a snapshot wait for it, then release every lock; the control socket validates the request', async () => {
    const dir = sub();
    mkdirSync(dir);
    const a = await encryptedDisk(dir, 'a', { subformat: 'monolithicSparse', capacity: MiB, content: random(65536) });
    const b = await encryptedDisk(dir, 'b', { subformat: 'monolithicFlat', capacity: MiB, content: random(65536) });
    const control = join(dir, 'ctl', 'serve.sock');
    const { host } = await startHost(dir, [{ path: a }, { path: b }], { control });
    let closed = false;
    try {
      await expect(controlRequest(control, { command: 'snapshot', name: 'a', snapshotName: 7 } as never)).rejects.toMatchObject({
        code: 'ERR_SERVE_REQUEST',
        message: 'Expected a non-empty string (a file name) for snapshotName of snapshot but received 7 of type number',
      });
      await expect(controlRequest(control, { command: 'snapshot' } as never)).rejects.toMatchObject({ code: 'ERR_SERVE_REQUEST' });
      const viaControl = (await controlRequest(control, { command: 'snapshot', name: 'a', snapshotName: 'a-s1' })) as Record<string, unknown>;
      expect(viaControl).toMatchObject({ name: 'a', path: join(dir, 'a-s1.vmdk'), parent: a, uri: expect.stringContaining('nbd+unix:///a?socket=') });

      // Detach right after a snapshot began: the snapshot completes (or finds the export closed), then the locks go.
      const snap = host.snapshot('a').then(
        (r) => r.path,
        (err: { code?: string }) => err.code,
      );
      await host.detach('a');
      const outcome = await snap;
      expect([join(dir, 'a-s1-000001.vmdk'), 'ERR_SERVE_CLOSED'], String(outcome)).toContain(outcome);
      for (const p of [a, join(dir, 'a-s1.vmdk'), join(dir, 'a-s1-000001.vmdk')].filter((f) => existsSync(f))) await (await acquireLock(p, 'test')).release();

      // close() right after a snapshot began: it waits for the snapshot, then closes the new top.
      const snapB = host.snapshot('b');
      const closing = host.close();
      closed = true;
      expect((await snapB).path).toBe(join(dir, 'b-000001.vmdk'));
      await closing;
      for (const p of [b, join(dir, 'b-000001.vmdk')]) await (await acquireLock(p, 'test')).release();
    } finally {
      if (!closed) await host.close();
    }
  });
});
