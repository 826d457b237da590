// The OFD lock primitive (src/util/lock.ts): only a live open file description holds a lock.
// Zombies, recycled or unrelated pids and empty or stale record files decide nothing.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleFixture } from '../helpers/bundle.js';
import { acquireFileLock, lockRecordPathFor, FileLockError } from '../../src/util/lock.js';
import { LocalKeyProvider } from '../../src/keys/index.js';

let dir: string;
let child: string;
let n = 0;
const fresh = () => join(dir, `target-${n++}`);
const started: ChildProcess[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-lock-'));
  child = await bundleFixture(new URL('./fixtures/lock-child.ts', import.meta.url));
});
afterAll(() => {
  for (const c of started) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
  rmSync(child, { force: true });
});

/** Start a command and resolve with the number printed after "locked " on its stdout. */
function startHolder(cmd: string, args: string[]): Promise<{ proc: ChildProcess; pid: number }> {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  started.push(proc);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    proc.stderr!.on('data', (d) => (err += d));
    proc.stdout!.on('data', (d) => {
      out += d;
      const m = /locked (\d+)/.exec(out);
      if (m) resolve({ proc, pid: Number(m[1]) });
    });
    proc.on('exit', (code) => reject(new Error(`holder exited (${code}) before locking: ${err}`)));
  });
}

function processState(pid: number): string | undefined {
  try {
    // /proc/<pid>/stat: "pid (comm) S ..."; the state follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function run(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const proc = spawn(process.execPath, [child, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => (stderr += d));
  return new Promise((r) => proc.on('exit', (code) => r({ code, stdout, stderr })));
}

describe('acquireFileLock', () => {
  it('a live holder excludes, naming itself from its record', async () => {
    const rec = lockRecordPathFor(fresh());
    const { proc, pid } = await startHolder(process.execPath, [child, 'hold', rec, 'exclusive']);
    const e = (await acquireFileLock(rec, { mode: 'exclusive' }).catch((x) => x)) as FileLockError;
    expect(e).toBeInstanceOf(FileLockError);
    expect(e.code).toBe('ERR_LOCK_BUSY');
    expect(e.message).toContain(`in use by vmseal (pid ${pid}, encrypt since`);
    await expect(acquireFileLock(rec, { mode: 'shared' })).rejects.toMatchObject({ code: 'ERR_LOCK_BUSY' });
    // waiting gives up after waitMs
    const t0 = Date.now();
    await expect(acquireFileLock(rec, { mode: 'exclusive', waitMs: 300 })).rejects.toMatchObject({ code: 'ERR_LOCK_BUSY' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    proc.kill('SIGKILL');
    await until(() => proc.exitCode !== null || proc.signalCode !== null, 'the holder to exit');
    const lock = await acquireFileLock(rec, { mode: 'exclusive' });
    lock.release();
    expect(existsSync(rec)).toBe(false);
  });

  it('a SIGKILLed holder that is an unreaped zombie holds nothing', async () => {
    const rec = lockRecordPathFor(fresh());
    // bash starts the holder in the background and becomes `sleep`, which never reaps it.
    const script = `"${process.execPath}" "${child}" hold "${rec}" exclusive & exec sleep 60`;
    const { proc: parent, pid } = await startHolder('bash', ['-c', script]);
    await expect(acquireFileLock(rec, { mode: 'exclusive' })).rejects.toMatchObject({ code: 'ERR_LOCK_BUSY' });
    process.kill(pid, 'SIGKILL');
    await until(() => processState(pid) === 'Z', 'the holder to become a zombie');
    // process.kill(pid, 0) still succeeds for a zombie: a pid test would call it alive.
    expect(() => process.kill(pid, 0)).not.toThrow();
    // The leader shows as a zombie while the holder's other threads may still be closing the
    // shared descriptor table: allow that moment (a pid test would refuse forever).
    const lock = await acquireFileLock(rec, { mode: 'exclusive', waitMs: 10_000 });
    lock.release();
    parent.kill('SIGKILL');
  });

  it('a record file naming a live unrelated pid, or an empty one, does not block', async () => {
    const rec = lockRecordPathFor(fresh());
    writeFileSync(rec, JSON.stringify({ pid: process.ppid, host: hostname(), operation: 'encrypt', started: new Date().toISOString(), tool: 'vmseal' }));
    (await acquireFileLock(rec, { mode: 'exclusive' })).release();
    writeFileSync(rec, JSON.stringify({ pid: 1, host: hostname(), operation: 'encrypt', started: new Date().toISOString(), tool: 'vmseal' }));
    (await acquireFileLock(rec, { mode: 'exclusive' })).release();
    writeFileSync(rec, '');
    const lock = await acquireFileLock(rec, { mode: 'exclusive' });
    expect(JSON.parse(readFileSync(rec, 'utf8'))).toMatchObject({ pid: process.pid, tool: 'vmseal' });
    lock.release();
  });

  it('10 processes racing through a stale record: the counter reaches 10, never two holders at once', async () => {
    const rec = lockRecordPathFor(fresh());
    const counter = join(dir, `counter-${n}`);
    const marker = join(dir, `marker-${n}`);
    writeFileSync(counter, '0');
    writeFileSync(rec, JSON.stringify({ pid: process.ppid, host: hostname(), operation: 'encrypt', started: '2020-01-01T00:00:00.000Z', tool: 'vmseal' }));
    const results = await Promise.all(Array.from({ length: 10 }, () => run(['count', rec, counter, marker])));
    for (const r of results) expect(r.stderr).toBe('');
    expect(results.map((r) => r.code)).toEqual(Array(10).fill(0));
    expect(readFileSync(counter, 'utf8')).toBe('10');
    expect(existsSync(marker)).toBe(false);
  });

  it('the lock fd is close-on-exec: a grandchild started by the holder keeps nothing alive', async () => {
    const rec = lockRecordPathFor(fresh());
    const { proc, pid: sleeper } = await startHolder(process.execPath, [child, 'spawn-hold', rec]);
    try {
      await expect(acquireFileLock(rec, { mode: 'exclusive' })).rejects.toMatchObject({ code: 'ERR_LOCK_BUSY' });
      proc.kill('SIGKILL');
      await until(() => proc.exitCode !== null || proc.signalCode !== null, 'the holder to exit');
      expect(processState(sleeper)).toBeDefined(); // the grandchild lives on
      (await acquireFileLock(rec, { mode: 'exclusive' })).release();
    } finally {
      try {
        process.kill(sleeper, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  it('shared holders coexist; an exclusive request names them as readers', async () => {
    const rec = lockRecordPathFor(fresh());
    const a = await acquireFileLock(rec, { mode: 'shared' });
    const b = await acquireFileLock(rec, { mode: 'shared' });
    const { proc } = await startHolder(process.execPath, [child, 'hold', rec, 'shared']);
    const e = (await acquireFileLock(rec, { mode: 'exclusive' }).catch((x) => x)) as FileLockError;
    expect(e.code).toBe('ERR_LOCK_BUSY');
    expect(e.message).toContain('in use for reading by another process');
    a.release();
    b.release();
    proc.kill('SIGKILL');
    await until(() => proc.exitCode !== null || proc.signalCode !== null, 'the reader to exit');
    (await acquireFileLock(rec, { mode: 'exclusive' })).release();
    expect(existsSync(rec)).toBe(false);
  });

  it('a lock record beside the real path: two names of one file share one lock', () => {
    const target = fresh();
    writeFileSync(target, '');
    const link = `${target}-link`;
    symlinkSync(target, link);
    expect(lockRecordPathFor(link)).toBe(lockRecordPathFor(target));
  });
});

describe('keystore lock', () => {
  it('10 processes each creating a key in one local keystore: all 10 keys are there', async () => {
    const home = join(dir, 'keystore-race');
    const results = await Promise.all(Array.from({ length: 10 }, () => run(['keystore', home])));
    for (const r of results) expect(r.stderr).toBe('');
    const ids = results.map((r) => r.stdout.trim());
    const listed = (await new LocalKeyProvider({ home }).list()).map((k) => k.keyId);
    expect(listed.sort()).toEqual(ids.sort());
    expect(listed).toHaveLength(10);
  });
});
