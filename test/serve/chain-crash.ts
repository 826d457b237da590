// Helpers of test/serve/chain-commit-crash*.test.ts (one file a flavour of chain, each under a minute):
// `vmseal serve` holding a chain (base ← child, encrypted and plain) is SIGKILLed at chosen steps of a
// live snapshot commit while a client goes on reading and checking every byte it reads. The steps are
// picked from what the commit's journal protocol does (src/pipeline/commit.ts), by the labelled calls
// of a run to the end: before the journal is in place, once it is, during the copy of the child's
// grains into the parent, after the copy but before the parent's final descriptor, after that switch
// but before the child's removal, and after the child's removal but before the journal's. After each:
//  - before the journal, the chain is the old one unchanged: a restarted `vmseal serve` serves it;
//  - after, a restarted `vmseal serve` of the chain is refused (ERR_INTERRUPTED_JOB, saying to run
//    `vmseal resume`), and `vmseal resume CHILD` finishes the commit;
// and the disk then holds every write the client had made (and flushed), `vmseal verify` passes and
// `qemu-img info --backing-chain` opens it. Killed after the final descriptor, the parent is whole
// and opens: it is served and written to before the resume, which must keep that write.
import { afterAll, beforeAll, expect, it } from 'vitest';
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { controlRequest, openDisk } from '../../src/index.js';
import { bundleFixture } from '../helpers/bundle.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmseal, vmsealChild } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, PASSPHRASE, run } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
export const CAPACITY = 8 * MiB;
const READ = 64 * KiB;

let tmp: ReturnType<typeof tempDir>;
let fixture: string;
let n = 0;
const servers = new Set<ChildProcess>();

/** The hooks of a test file using this module: a temp folder, the bundled fixture, no server left. */
export function setUpChainCrash(): void {
  beforeAll(async () => {
    tmp = tempDir('vmseal-serve-chain-crash-');
    fixture = await bundleFixture(new URL('./fixtures/chain-crash-serve.ts', import.meta.url));
  });
  afterAll(() => {
    for (const s of servers) s.kill('SIGKILL');
    tmp?.cleanup();
    if (fixture) rmSync(fixture, { force: true });
  });
}

export type Flavor = 'encrypted' | 'plain';

interface Run {
  dir: string;
  disk: string;
  child: string;
  model: Buffer;
  /** Reads answered while the commit ran, and those whose bytes were not the model's. */
  reads: number;
  mismatches: number;
  /** The labelled calls of the commit (a run to the end only). */
  events: string[];
  signal: NodeJS.Signals | null;
}

/** Wait for `line` on a child's stdout (rejects if it exits first). */
function lineOf(server: ChildProcess, out: () => string, line: RegExp): Promise<string> {
  return new Promise((done, fail) => {
    const check = (): void => {
      const m = line.exec(out());
      if (m) {
        server.stdout!.off('data', check);
        done(m[0]);
      }
    };
    server.stdout!.on('data', check);
    server.once('close', () => fail(new Error(`server exited before ${String(line)}`)));
    check();
  });
}

/** A new base disk `vm.vmdk` in `dir` (monolithicSparse, 8 MiB) holding `before` at its start. */
export async function makeBase(dir: string, flavor: Flavor, before: Buffer): Promise<string> {
  if (flavor === 'encrypted') return encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: CAPACITY, content: before });
  const path = join(dir, 'vm.vmdk');
  const raw = join(dir, 'before.raw');
  const full = Buffer.alloc(CAPACITY);
  before.copy(full);
  writeFileSync(raw, full);
  await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', raw, path]);
  rmSync(raw);
  return path;
}

/**
 * Serve a new base in the fixture, write, snapshot live, write into the child, then commit while
 * reading continuously; the server kills itself at its `killAt`-th labelled call (0: never).
 */
/** A fixture server on a new base of `flavor` (1 MiB of data at its start, also in `model`), ready. */
interface Served {
  dir: string;
  disk: string;
  control: string;
  model: Buffer;
  socket: string;
  server: ChildProcessWithoutNullStreams;
  stdout: () => string;
  exit: Promise<NodeJS.Signals | null>;
}

/** Start the fixture on a new base in a new folder named `<flavor>-<label><n>`; it kills itself at its `killAt`-th labelled call. */
async function serveNewBase(flavor: Flavor, killAt: number, label: string): Promise<Served> {
  const dir = join(tmp.dir, `${flavor}-${label}${++n}`);
  mkdirSync(dir, { mode: 0o700 });
  const before = randomBytes(MiB);
  const disk = await makeBase(dir, flavor, before);
  const socket = join(dir, 'nbd.sock');
  const control = join(dir, 'ctl', 'serve.sock');
  const server = spawn(process.execPath, [fixture], {
    env: { ...process.env, DISK: disk, SOCKET: socket, CONTROL: control, KILL_AT: String(killAt), PASSPHRASE: flavor === 'encrypted' ? PASSPHRASE : '' },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  servers.add(server);
  let stdout = '';
  let stderr = '';
  server.stdout.on('data', (d) => (stdout += String(d)));
  server.stderr.on('data', (d) => (stderr += String(d)));
  const exit = new Promise<NodeJS.Signals | null>((done) =>
    server.on('close', (_code, signal) => {
      servers.delete(server);
      done(signal);
    }),
  );
  await lineOf(server, () => stdout, /^ready$/m).catch((e: Error) => {
    throw new Error(`${e.message}: ${stderr}`);
  });
  const model = Buffer.alloc(CAPACITY);
  before.copy(model);
  return { dir, disk, control, model, server, stdout: () => stdout, exit, socket };
}

/** After a run without a kill: the labelled calls the server made, then the server stopped (it stops once its clients are gone). */
async function eventsAndStop(s: Served, c: RawClient): Promise<string[]> {
  s.server.stdin.write('dump\n');
  const events = JSON.parse((await lineOf(s.server, s.stdout, /^events=.*$/m)).slice('events='.length)) as string[];
  c.close();
  s.server.kill('SIGTERM');
  return events;
}

async function commitIn(flavor: Flavor, killAt: number): Promise<Run> {
  const served = await serveNewBase(flavor, killAt, '');
  const { dir, disk, control, model, server, stdout, exit } = served;
  const c = await RawClient.connect(served.socket);
  try {
    await c.go('vm');
    const write = async (offset: number, data: Buffer): Promise<void> => {
      expect((await c.request(CMD.WRITE, offset, data.length, 0, data)).error).toBe(0);
      data.copy(model, offset);
    };
    await write(2 * MiB, randomBytes(128 * KiB));
    const snap = (await controlRequest(control, { command: 'snapshot', name: 'vm' })) as { path: string };
    // Into the child: new grains, grains overlapping the parent's data, a partial grain; enough of
    // them that the copy is many writes.
    await write(3 * MiB, randomBytes(MiB));
    await write(2 * MiB + 64 * KiB, randomBytes(128 * KiB));
    await write(5 * MiB + 4 * KiB, randomBytes(8 * KiB));
    await write(512 * KiB, randomBytes(256 * KiB));
    // What a crash must keep is what a FLUSH made durable (docs/serve.md: the grain tables of a
    // sparse layer are written by the flush): a guest flushes before it relies on a write.
    expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
    server.stdin.write('arm\n');
    await lineOf(server, stdout, /^armed$/m);
    let settled = false;
    const commit = controlRequest(control, { command: 'commit', name: 'vm' }).finally(() => (settled = true));
    commit.catch(() => undefined);
    // Read on, checking each reply against the model, until the commit ends or the server dies.
    let reads = 0;
    let mismatches = 0;
    for (let i = 0; !settled; i++) {
      const at = ((i * 7) % (CAPACITY / READ)) * READ;
      const r = await c.request(CMD.READ, at, READ).catch(() => undefined);
      if (!r) break;
      expect(r.error).toBe(0);
      reads++;
      if (!r.data.equals(model.subarray(at, at + READ))) mismatches++;
    }
    let events: string[] = [];
    if (killAt === 0) {
      await expect(commit).resolves.toMatchObject({ path: disk, removed: snap.path });
      events = await eventsAndStop(served, c);
    } else {
      await expect(commit).rejects.toThrow();
    }
    return { dir, disk, child: snap.path, model, reads, mismatches, events, signal: await exit };
  } finally {
    c.close();
  }
}

/** The steps of the commit, as 1-based indexes of its labelled calls (the kill happens before the call runs). */
function stepsOf(events: string[], child: string, disk: string): Record<string, number> {
  const childName = child.slice(child.lastIndexOf('/') + 1);
  const diskName = disk.slice(disk.lastIndexOf('/') + 1);
  const journal = `${childName}.vmseal-journal`;
  const placed = events.findIndex((e) => /^[lr]:/.test(e) && e.endsWith(`:${journal}`));
  const firstUnlink = events.findIndex((e) => e === `u:${childName}`);
  const journalUnlink = events.findIndex((e) => e === `u:${journal}`);
  // The parent's descriptor is embedded in its one file: its writes are the "during" descriptor,
  // the grains, the grain tables … and, last before the child's files go, the "final" descriptor.
  const parentWrites = events.map((e, i) => (e === `w:${diskName}` && i > placed && i < firstUnlink ? i : -1)).filter((i) => i >= 0);
  expect(placed, events.join(' ')).toBeGreaterThan(0);
  expect(parentWrites.length, events.join(' ')).toBeGreaterThan(3);
  expect(journalUnlink).toBeGreaterThan(firstUnlink);
  return {
    'before the journal is written': 1,
    'before the journal is in place': placed + 1,
    'once the journal is in place': placed + 2,
    'during the copy of the grains': parentWrites[Math.floor(parentWrites.length / 2)]! + 1,
    'after the copy, before the final descriptor': parentWrites[parentWrites.length - 1]! + 1,
    'after the final descriptor, before the child is removed': firstUnlink + 1,
    'after the child is removed, before the journal is': journalUnlink + 1,
  };
}

/** The error code of opening `path` read-only (undefined: it opens). */
export async function openCode(path: string, flavor: Flavor): Promise<string | undefined> {
  return openDisk(path, { ...(flavor === 'encrypted' ? { keys: KEYS } : {}), readOnly: true }).then(
    async (d) => {
      await d.close();
      return undefined;
    },
    (e: { code?: string }) => e.code ?? String(e),
  );
}

/** Start `vmseal serve` on `disk`: resolves once it serves, or with its exit and stderr if it does not start. */
function restartServe(
  disk: string,
  dir: string,
  env: NodeJS.ProcessEnv,
  flavor: Flavor,
): Promise<{ served: true; socket: string; stop: () => Promise<void> } | { served: false; code: number | null; stderr: string }> {
  const socket = join(dir, 'again.sock');
  const keyArgs = flavor === 'encrypted' ? ['--recovery-passphrase'] : [];
  const child = vmsealChild(['serve', disk, '--socket', socket, '--name', 'vm', ...keyArgs], env);
  servers.add(child);
  return new Promise((done) => {
    let stderr = '';
    child.stdout.resume();
    const closed = new Promise<void>((ended) => child.on('close', () => ended()));
    child.stderr.on('data', (d) => {
      stderr += String(d);
      if (/^vmseal: serving vm on /m.test(stderr)) {
        done({
          served: true,
          socket,
          stop: async () => {
            child.kill('SIGTERM');
            await closed;
          },
        });
      }
    });
    child.on('close', (code) => {
      servers.delete(child);
      done({ served: false, code, stderr });
    });
  });
}

/** Everything of the disk through a new NBD connection. */
async function readAll(socket: string): Promise<Buffer> {
  const c = await RawClient.connect(socket);
  try {
    await c.go('vm');
    const r = await c.request(CMD.READ, 0, CAPACITY);
    expect(r.error).toBe(0);
    return r.data;
  } finally {
    c.close();
  }
}

/** The whole content of the disk (chain) at `path`. */
export async function plaintext(path: string, flavor: Flavor): Promise<Buffer> {
  const d = await openDisk(path, { ...(flavor === 'encrypted' ? { keys: KEYS } : {}), readOnly: true });
  try {
    return await d.read(0, d.capacity);
  } finally {
    await d.close();
  }
}

/** `vmseal verify` passes and qemu-img opens the whole chain ending at `top` (`layers` files). */
async function expectSound(top: string, layers: number, env: NodeJS.ProcessEnv, flavor: Flavor, label: string): Promise<void> {
  const verified = await vmseal(['verify', top, ...(flavor === 'encrypted' ? ['--recovery-passphrase'] : [])], env);
  expect(verified.code, `verify ${label}: ${verified.stderr}`).toBe(0);
  const info = JSON.parse(await run('qemu-img', ['info', '--output=json', '--backing-chain', top])) as Array<{ filename: string }>;
  expect(info.length, `qemu-img info --backing-chain ${label}`).toBe(layers);
}

/** Kill the server at each step of the commit (stepsOf) and check what is left; see the top of this file. */
export async function checkCommitKills(flavor: Flavor): Promise<void> {
  const dry = await commitIn(flavor, 0);
  expect(dry.mismatches).toBe(0);
  expect(dry.reads).toBeGreaterThan(0);
  expect((await plaintext(dry.disk, flavor)).equals(dry.model)).toBe(true);
  const steps = stepsOf(dry.events, dry.child, dry.disk);

  for (const [step, point] of Object.entries(steps)) {
    const label = `${flavor}, killed ${step} (call ${point}: ${dry.events[point - 1]})`;
    const r = await commitIn(flavor, point);
    expect(r.signal, label).toBe('SIGKILL');
    expect(r.mismatches, `reads that did not return the written data, ${label}`).toBe(0);
    const env = cleanEnv({ VMSEAL_HOME: join(r.dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
    const journaled = existsSync(`${r.child}.vmseal-journal`);
    expect(journaled, `journal, ${label}`).toBe(point > steps['before the journal is in place']!);

    if (!journaled) {
      // The old chain, unchanged: served again, with every write.
      expect(await openCode(r.child, flavor), label).toBeUndefined();
      const again = await restartServe(r.child, r.dir, env, flavor);
      expect(again.served, `serve again, ${label}: ${again.served ? '' : again.stderr}`).toBe(true);
      if (again.served) {
        expect((await readAll(again.socket)).equals(r.model), `content served again, ${label}`).toBe(true);
        await again.stop();
      }
      await expectSound(r.child, 2, env, flavor, label);
      continue;
    }

    // Half merged (or merged, the child not yet removed): the chain is not served.
    if (existsSync(r.child)) {
      expect(await openCode(r.child, flavor), `child, ${label}`).toBe('ERR_INTERRUPTED_JOB');
      const again = await restartServe(r.child, r.dir, env, flavor);
      expect(again.served, `serve again, ${label}`).toBe(false);
      if (!again.served) {
        expect(again.code, label).not.toBe(0);
        // The message names the job the journal records and the one right action for it.
        expect(again.stderr, `${label}: ${again.stderr}`).toMatch(/interrupted snapshot commit/);
        expect(again.stderr, label).toContain(`vmseal resume ${r.child}`);
        expect(again.stderr, label).not.toMatch(/same command again|in-place job/);
      }
    }
    if (step === 'after the final descriptor, before the child is removed') {
      // The parent is whole and opens (its descriptor is the final one): a restarted server may
      // serve it and its client write to it. A resume later must keep those writes.
      expect(await openCode(r.disk, flavor), label).toBeUndefined();
      const parent = await restartServe(r.disk, r.dir, env, flavor);
      expect(parent.served, `serve the parent, ${label}: ${parent.served ? '' : parent.stderr}`).toBe(true);
      if (parent.served) {
        const c = await RawClient.connect(parent.socket);
        try {
          await c.go('vm');
          const data = randomBytes(64 * KiB);
          // Over a grain the child held: a resume that copied the child again would undo it.
          expect((await c.request(CMD.WRITE, 3 * MiB, data.length, 0, data)).error).toBe(0);
          expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
          data.copy(r.model, 3 * MiB);
        } finally {
          c.close();
        }
        await parent.stop();
      }
    }
    const resumed = await vmseal(['resume', r.child, ...(flavor === 'encrypted' ? ['--recovery-passphrase'] : [])], env);
    expect(resumed.code, `resume, ${label}: ${resumed.stderr}`).toBe(0);
    expect(existsSync(r.child), label).toBe(false);
    expect((await plaintext(r.disk, flavor)).equals(r.model), `content after resume, ${label}`).toBe(true);
    await expectSound(r.disk, 1, env, flavor, label);
    expect(
      readdirSync(r.dir).filter((f) => /journal|\.tmp|vm-0000/.test(f)),
      `leftovers, ${label}`,
    ).toEqual([]);
  }
}

/**
 * Serve a new base in the fixture, write and flush, then ask for a live snapshot; the server kills
 * itself at the snapshot's `killAt`-th labelled call (0: never). The child is VMware's default name.
 */
async function snapshotIn(flavor: Flavor, killAt: number): Promise<Run> {
  const served = await serveNewBase(flavor, killAt, 'snap-');
  const { dir, disk, control, model, server, stdout, exit } = served;
  const c = await RawClient.connect(served.socket);
  try {
    await c.go('vm');
    const data = randomBytes(256 * KiB);
    expect((await c.request(CMD.WRITE, 2 * MiB, data.length, 0, data)).error).toBe(0);
    data.copy(model, 2 * MiB);
    expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
    server.stdin.write('arm\n');
    await lineOf(server, stdout, /^armed$/m);
    const snap = controlRequest(control, { command: 'snapshot', name: 'vm' });
    snap.catch(() => undefined);
    let events: string[] = [];
    if (killAt === 0) {
      await snap;
      events = await eventsAndStop(served, c);
    } else {
      await expect(snap).rejects.toThrow();
    }
    return { dir, disk, child: join(dir, 'vm-000001.vmdk'), model, reads: 0, mismatches: 0, events, signal: await exit };
  } finally {
    c.close();
  }
}

/** The temporary files of an unfinished snapshot of `disk` (src/vmdk/pending-snapshot.ts), left in its folder. */
export function pendingChildren(disk: string): string[] {
  const name = basename(disk);
  return readdirSync(dirname(disk)).filter((f) => f.startsWith(`.${name}.vmseal-snapshot`));
}

/** Whether `path` has no write bit (a layer with a child, or one a cut-short snapshot made read-only). */
export function readOnlyFile(path: string): boolean {
  return (statSync(path).mode & 0o222) === 0;
}

/**
 * Kill the server at every call of a live snapshot: the state left needs no manual step. The base
 * keeps every flushed write, and a restarted `vmseal serve` serves either the base — also when the
 * kill came after it was made read-only but before the child was renamed into place: the temporary
 * child left beside it is removed and the base made writable again on its open — or, once the child
 * is in place (whole: it was fsynced before the rename), the child's chain, which reads the same.
 * Returns one line per kill point saying which.
 */
export async function checkSnapshotKills(flavor: Flavor): Promise<string[]> {
  const dry = await snapshotIn(flavor, 0);
  expect(pendingChildren(dry.disk), 'no temporary child after a finished snapshot').toEqual([]);
  const outcomes: string[] = [];
  for (let point = 1; point <= dry.events.length; point++) {
    const label = `${flavor}, snapshot killed at call ${point} (${dry.events[point - 1]})`;
    const r = await snapshotIn(flavor, point);
    expect(r.signal, label).toBe('SIGKILL');
    const env = cleanEnv({ VMSEAL_HOME: join(r.dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
    if (existsSync(r.child)) {
      // The child is in place: whole, and the base is its read-only parent.
      expect(readOnlyFile(r.disk), `base read-only under its child, ${label}`).toBe(true);
      expect(pendingChildren(r.disk), label).toEqual([]);
      const top = await restartServe(r.child, r.dir, env, flavor);
      expect(top.served, `serve the child, ${label}: ${top.served ? '' : top.stderr}`).toBe(true);
      if (top.served) {
        expect((await readAll(top.socket)).equals(r.model), `child served, ${label}`).toBe(true);
        await top.stop();
      }
      outcomes.push(`${label}: child served`);
      continue;
    }
    // No child: the base is served, made writable again first if the snapshot had made it read-only.
    const undone = readOnlyFile(r.disk);
    if (undone) expect(pendingChildren(r.disk), `a read-only base without a child has the marker, ${label}`).not.toEqual([]);
    const base = await restartServe(r.disk, r.dir, env, flavor);
    expect(base.served, `serve the base again, ${label}: ${base.served ? '' : base.stderr}`).toBe(true);
    if (base.served) {
      expect((await readAll(base.socket)).equals(r.model), `base served again, ${label}`).toBe(true);
      await base.stop();
    }
    expect(readOnlyFile(r.disk), label).toBe(false);
    expect(pendingChildren(r.disk), `leftovers, ${label}`).toEqual([]);
    outcomes.push(`${label}: base served${undone ? ' after undo' : ''}; no child`);
  }
  return outcomes;
}

/**
 * The live-snapshot crash test of one flavor (a file per flavor, each under a minute): every kind of
 * outcome is met — killed before the base is made read-only; after it, the child not in place yet
 * (undone on the restart); the child in place.
 */
export function snapshotKillTest(flavor: Flavor): void {
  it(`${flavor}: the base or the finished child is served again with every write, with no manual step`, async () => {
    const outcomes = await checkSnapshotKills(flavor);
    for (const kind of [/base served; no child/, /base served after undo; no child/, /child served/]) {
      expect(
        outcomes.some((o) => kind.test(o)),
        `${String(kind)}:\n${outcomes.join('\n')}`,
      ).toBe(true);
    }
  }, 120_000);
}
