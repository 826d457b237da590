// The server killed with SIGKILL in the middle of a live snapshot commit (NbdHost.commit, the last
// step of vmseal host backup), at points spread over the commit's protocol: the chain is refused
// (ERR_INTERRUPTED_JOB) as after an interrupted `vmseal snapshot commit`, `vmseal resume CHILD`
// finishes it, and the disk then holds exactly what the client had written, the child gone.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { controlRequest, openDisk } from '../../src/index.js';
import { bundleFixture } from '../helpers/bundle.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmseal } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, PASSPHRASE, plaintextOf } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const KiB = 1024;
const MiB = 1 << 20;
const CAPACITY = 8 * MiB;

let tmp: ReturnType<typeof tempDir>;
let fixture: string;
let n = 0;
beforeAll(async () => {
  tmp = tempDir('vmseal-serve-commit-kill-');
  fixture = await bundleFixture(new URL('./fixtures/commit-kill-serve.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (fixture) rmSync(fixture, { force: true });
});

interface Run {
  dir: string;
  disk: string;
  child: string;
  model: Buffer;
  /** The commit's reply, or its error once the server died. */
  commit: Promise<unknown>;
  /** Resolves with the server's stdout and the signal that ended it. */
  exit: Promise<{ stdout: string; signal: NodeJS.Signals | null }>;
  stop(): void;
}

/** Serve a new disk in a child server, write, snapshot live, write more, then ask for the commit. */
async function commitIn(killAfter: number): Promise<Run> {
  const dir = join(tmp.dir, String(++n));
  mkdirSync(dir, { mode: 0o700 });
  const before = randomBytes(MiB);
  const disk = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: CAPACITY, content: before });
  const socket = join(dir, 'nbd.sock');
  const control = join(dir, 'ctl', 'serve.sock');
  const server = spawn(process.execPath, [fixture], {
    env: { ...process.env, DISK: disk, SOCKET: socket, CONTROL: control, PASSPHRASE, KILL_AFTER: String(killAfter) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  server.stdout.on('data', (d) => (stdout += String(d)));
  server.stderr.on('data', (d) => (stderr += String(d)));
  const exit = new Promise<{ stdout: string; signal: NodeJS.Signals | null }>((done) => server.on('close', (_code, signal) => done({ stdout, signal })));
  await new Promise<void>((ready, fail) => {
    server.stdout.on('data', () => {
      if (stdout.includes('ready\n')) ready();
    });
    void exit.then(() => fail(new Error(`server exited: ${stderr}`)));
  });
  const model = Buffer.alloc(CAPACITY);
  before.copy(model);
  const c = await RawClient.connect(socket);
  try {
    await c.go('vm');
    const write = async (offset: number, data: Buffer): Promise<void> => {
      expect((await c.request(CMD.WRITE, offset, data.length, 0, data)).error).toBe(0);
      data.copy(model, offset);
    };
    await write(2 * MiB, randomBytes(128 * KiB));
    const snap = (await controlRequest(control, { command: 'snapshot', name: 'vm' })) as { path: string };
    // Into the child: new grains, one overlapping the parent's data, one partial grain.
    await write(3 * MiB, randomBytes(256 * KiB));
    await write(2 * MiB + 64 * KiB, randomBytes(128 * KiB));
    await write(5 * MiB + 4 * KiB, randomBytes(8 * KiB));
    const commit = controlRequest(control, { command: 'commit', name: 'vm' });
    commit.catch(() => undefined);
    return { dir, disk, child: snap.path, model, commit, exit, stop: () => server.kill('SIGTERM') };
  } finally {
    c.close();
  }
}

async function openCode(path: string): Promise<string | undefined> {
  return openDisk(path, { keys: KEYS, readOnly: true }).then(
    async (d) => {
      await d.close();
      return undefined;
    },
    (e: { code?: string }) => e.code,
  );
}

describe('SIGKILL of the server during a live snapshot commit', () => {
  it('leaves the chain refused until vmseal resume finishes the commit; then the disk holds every write', async () => {
    // A run to the end counts the calls of the commit.
    const dry = await commitIn(0);
    await expect(dry.commit).resolves.toMatchObject({ path: dry.disk, removed: dry.child });
    dry.stop();
    const { stdout } = await dry.exit;
    const total = Number(/events=(\d+)/.exec(stdout)?.[1]);
    expect(total).toBeGreaterThan(5);
    expect((await plaintextOf(dry.disk)).equals(dry.model)).toBe(true);

    let parentRefused = 0;
    for (const point of [...new Set([1, Math.round(total / 3), Math.round((2 * total) / 3), total - 1])]) {
      const r = await commitIn(point);
      await expect(r.commit, `commit killed at ${point}`).rejects.toThrow();
      expect((await r.exit).signal, `kill at ${point}`).toBe('SIGKILL');
      expect(existsSync(`${r.child}.vmseal-journal`), `journal after kill at ${point}`).toBe(true);
      // Half merged: refused by its child (while it exists) and, once its descriptor says so, by the parent.
      if (existsSync(r.child)) expect(await openCode(r.child), `child after kill at ${point}`).toBe('ERR_INTERRUPTED_JOB');
      const parentCode = await openCode(r.disk);
      expect([undefined, 'ERR_INTERRUPTED_JOB'], `parent after kill at ${point}`).toContain(parentCode);
      if (parentCode) parentRefused++;

      const env = cleanEnv({ VMSEAL_HOME: join(r.dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
      const resumed = await vmseal(['resume', r.child, '--recovery-passphrase'], env);
      expect(resumed.code, `resume after kill at ${point}: ${resumed.stderr}`).toBe(0);
      expect(existsSync(r.child)).toBe(false);
      expect((await plaintextOf(r.disk)).equals(r.model), `content after kill at ${point}`).toBe(true);
      expect(
        readdirSync(r.dir).filter((f) => /journal|\.tmp|vm-0000/.test(f)),
        `leftovers after kill at ${point}`,
      ).toEqual([]);
    }
    expect(parentRefused).toBeGreaterThan(0);
  }, 60_000);
});
