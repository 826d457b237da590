// FLUSH on a sparse export under simulated power loss (test/helpers/crash-fs.ts): a child process
// serves an encrypted monolithicSparse disk through the fault-injecting file layer; this test writes
// the batches of test/vmdk/fixtures/sparse-crash-scenario.ts over NBD (new grains, new grain tables,
// overwrites, unaligned writes) with a FLUSH after each batch but the last, which the host's close
// flushes. At a crash point the child loses what was not durable and dies. Every write whose FLUSH
// was answered must then be there, the disk pass `qemu-img check` and open, and every grain read as
// a state of the batches since the last answered FLUSH.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { bundleFixture } from '../helpers/bundle.js';
import { createEncryptedDisk } from '../../src/disk/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { BATCHES, CAPACITY, GRAIN, crashedDiskProblem, writeData } from '../vmdk/fixtures/sparse-crash-scenario.js';
import { CMD, RawClient } from './nbd-client.js';

const PASSPHRASE = 'pw';
let tmp: ReturnType<typeof tempDir>;
let child: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-serve-sparse-crash-');
  child = await bundleFixture(new URL('./fixtures/sparse-crash-child.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (child) rmSync(child, { force: true });
});

interface Outcome {
  signal: NodeJS.Signals | null;
  code: number | null;
  stderr: string;
  /** Batches whose FLUSH was answered (all of them when the host closed cleanly). */
  flushed: number;
  events: number;
}

/** Serve the disk in a child through crash-fs and drive the batches over NBD until done or the child dies. */
async function drive(folder: string, socket: string, crashAt: number, keep: string): Promise<Outcome> {
  const proc = spawn(process.execPath, [child, join(folder, 'd.vmdk'), socket, PASSPHRASE], {
    env: { ...process.env, CRASH_ROOT: folder, CRASH_AT: String(crashAt), CRASH_KEEP: keep },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  proc.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    proc.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const ready = new Promise<boolean>((resolve) => {
    proc.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
      if (stdout.includes('ready\n')) resolve(true);
    });
    void exited.then(() => resolve(false));
  });
  let flushed = 0;
  if (await ready) {
    let client: RawClient | undefined;
    try {
      client = await RawClient.connect(socket);
      await client.go('d');
      for (let b = 0; b < BATCHES.length; b++) {
        for (const w of BATCHES[b]) {
          const r = await client.request(CMD.WRITE, w.offset, w.length, 0, writeData(w));
          if (r.error) throw new Error(`WRITE failed: ${r.error}`);
        }
        if (b === BATCHES.length - 1) break;
        const f = await client.request(CMD.FLUSH, 0, 0);
        if (f.error) throw new Error(`FLUSH failed: ${f.error}`);
        flushed = b + 1;
      }
    } catch (err) {
      // The server died at its crash point: the connection closed under the client.
      if ((err as Error).message !== 'closed' && !/ECONNREFUSED|ENOENT|EPIPE|ECONNRESET/.test(String(err))) throw err;
    } finally {
      client?.close();
    }
  }
  proc.stdin.end();
  const { code, signal } = await exited;
  const events = Number(/events=(\d+)/.exec(stdout)?.[1] ?? 0);
  return { code, signal, stderr, flushed: code === 0 && events > 0 ? BATCHES.length : flushed, events };
}

/** Crash points: 12 spread over the run (the first and last among them); VMSEAL_CRASH_SAMPLE=0 for every one. */
function crashPoints(total: number): number[] {
  const all = Array.from({ length: total }, (_, i) => i + 1);
  const sample = Number(process.env.VMSEAL_CRASH_SAMPLE ?? 12);
  if (!sample || sample >= all.length) return all;
  return [...new Set(Array.from({ length: sample }, (_, i) => all[Math.round((i * (all.length - 1)) / (sample - 1))]))];
}

describe('a power loss while a sparse export allocates grains', () => {
  it.each(['none', 'last'])('keeps every write answered before a FLUSH reply, and a disk that checks and opens (un-synced writes kept: %s)', async (keep) => {
    const pristine = join(tmp.dir, `${keep}-pristine`);
    mkdirSync(pristine);
    const d = await createEncryptedDisk(join(pristine, 'd.vmdk'), {
      capacity: CAPACITY,
      subformat: 'monolithicSparse',
      grainSize: GRAIN,
      lockers: [phraseLocker(PASSPHRASE)],
    });
    await d.close();

    const full = join(tmp.dir, `${keep}-full`);
    cpSync(pristine, full, { recursive: true });
    const total = await drive(full, join(tmp.dir, `${keep}-full.sock`), 0, keep);
    expect(total.code, total.stderr).toBe(0);
    expect(total.events).toBeGreaterThan(10);
    expect(await crashedDiskProblem(join(full, 'd.vmdk'), PASSPHRASE, BATCHES.length), 'no crash').toBeUndefined();
    rmSync(full, { recursive: true, force: true });

    for (const at of crashPoints(total.events)) {
      const where = `crash point ${at} of ${total.events}`;
      const folder = join(tmp.dir, `${keep}-${at}`);
      cpSync(pristine, folder, { recursive: true });
      const r = await drive(folder, join(tmp.dir, `${keep}-${at}.sock`), at, keep);
      expect(r.signal, `${where}: ${r.stderr}`).toBe('SIGKILL');
      expect(await crashedDiskProblem(join(folder, 'd.vmdk'), PASSPHRASE, r.flushed), `${where} (FLUSH answered after batch ${r.flushed})`).toBeUndefined();
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
