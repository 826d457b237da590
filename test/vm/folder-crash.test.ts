// Power loss at points all through a VM folder job (vm encrypt, vm decrypt), simulated by the
// fault-injecting file layer (test/helpers/crash-fs.ts: every write and rename not made durable is
// lost, then SIGKILL): during a disk (the first one has a snapshot: its chain is rewritten aside and
// moved over itself), after some disks, after the disks and state files before the .vmx, and just
// before the job file goes. After each, inspectVm reports the interrupted job (once its
// job file is durable), the same call finishes the job, and the VM decrypts to its original bytes.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalKeyProvider } from '../../src/keys/index.js';
import { decryptVmFolder, encryptVmFolder, inspectVm, readVmJob, VM_JOB_NAME } from '../../src/vm/index.js';
import { bundleFixture } from '../helpers/bundle.js';
import { FULL, full } from '../helpers/points.js';
import { tempDir } from '../disk/helpers.js';
import { contentHash, randomRaw, sha256 } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
let child: string;
let template: string;
let keystore: string;
const original: Record<string, string> = {};
const DISKS = ['disk0-000001.vmdk', 'data.vmdk'];
const FILES = ['web.vmx', 'web.nvram'];
const TIMEOUT = full(120_000, 3_600_000);

function run(op: 'encrypt' | 'decrypt', vm: string, crashAt = 0) {
  const r = spawnSync(process.execPath, [child, op, vm], { env: { ...process.env, CRASH_AT: String(crashAt), KEYSTORE: keystore }, encoding: 'utf8' });
  const steps = [...r.stdout.matchAll(/step=(\d+) events=(\d+)/g)].map((m) => Number(m[2]));
  return { signal: r.signal, status: r.status, stderr: r.stderr, steps, events: Number(/^events=(\d+)/m.exec(r.stdout)?.[1] ?? 0) };
}

/**
 * Crash points, from the events count when each step was recorded (`ends`): while the job file is
 * first written, in the middle of the first disk, just after each step's record (`all`: every
 * step; `few`: the first and the one before the .vmx), one call before the last step's record, and
 * the last call (the job file's removal). `npm run fuzz` (VMSEAL_TEST_FULL=1, test/helpers/points.ts)
 * crashes at every call of both jobs.
 */
function points(ends: number[], total: number, which: 'all' | 'few'): number[] {
  if (FULL) return Array.from({ length: total }, (_, i) => i + 1);
  const pts = new Set<number>([Math.round(ends[0]! / 2), ends.at(-1)! - 1, total]);
  // The first disk is a snapshot chain: also while its new chain is moved over the old one.
  if (which === 'all') for (const p of [2, ends[0]! - 2, ends[0]! - 5, ends[0]! - 7, ends[0]! - 9]) pts.add(p);
  for (const end of which === 'all' ? ends.slice(0, -1) : [ends[0]!, ends.at(-2)!]) pts.add(end + 1);
  return [...pts].filter((p) => p >= 1 && p <= total).sort((a, b) => a - b);
}

async function expectOriginal(vm: string, where: string): Promise<void> {
  for (const d of DISKS) expect(await contentHash(join(vm, d)), `${d} ${where}`).toBe(original[d]);
  for (const f of FILES) expect(sha256(readFileSync(join(vm, f))), `${f} ${where}`).toBe(original[f]);
  // A staging folder of a decryption may come back: the crash layer recreates every folder it saw
  // (it does not model the removal of a folder), so only files count here. A real one would be
  // removed by the next job on that disk.
  expect(
    readdirSync(vm, { withFileTypes: true })
      .filter((e) => e.isFile() && /journal|vmseal-tmp|\.tmp-|vmseal-vm/.test(e.name))
      .map((e) => e.name),
    `leftovers ${where}`,
  ).toEqual([]);
}

beforeAll(async () => {
  tmp = tempDir('vmseal-vm-crash-');
  child = await bundleFixture(new URL('./fixtures/folder-crash-child.ts', import.meta.url));
  keystore = join(tmp.dir, 'home');
  template = join(tmp.dir, 'template');
  mkdirSync(template);
  const raw = randomRaw(join(tmp.dir, 'd.raw'), 600_000);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', raw, join(template, 'disk0.vmdk')]);
  // disk0 has a snapshot: the .vmx names the child, which holds data of its own.
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'disk0.vmdk', '-F', 'vmdk', join(template, 'disk0-000001.vmdk')]);
  execFileSync('qemu-io', ['-c', 'write -P 0x5a 256k 128k', join(template, 'disk0-000001.vmdk')]);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', raw, join(template, 'data.vmdk')]);
  writeFileSync(join(template, 'web.vmx'), 'displayName = "web"\nscsi0:0.fileName = "disk0-000001.vmdk"\nscsi0:1.fileName = "data.vmdk"\n');
  writeFileSync(join(template, 'web.nvram'), randomBytes(70_000));
  for (const d of DISKS) original[d] = await contentHash(join(template, d));
  for (const f of FILES) original[f] = sha256(readFileSync(join(template, f)));
}, 60_000);

afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

let n = 0;
function freshVm(): string {
  const vm = join(tmp.dir, `vm${n++}`);
  cpSync(template, vm, { recursive: true });
  return vm;
}

describe('power loss during vm encrypt DIR, then the same call again', { timeout: TIMEOUT }, () => {
  it('finishes the job from every crash point; vm info says a job is interrupted until then', async () => {
    const dry = run('encrypt', freshVm());
    expect(dry.status, dry.stderr).toBe(0);
    expect(dry.steps).toHaveLength(4); // two disks, the .nvram, the .vmx
    const seen = new Set<number>();
    for (const point of points(dry.steps, dry.events, 'all')) {
      const vm = freshVm();
      const crashed = run('encrypt', vm, point);
      expect(crashed.signal, `crash at ${point}: ${crashed.stderr}`).toBe('SIGKILL');
      const job = await readVmJob(vm);
      if (job) {
        seen.add(job.steps.filter((s) => s.done).length);
        const info = await inspectVm(vm, { keys: { providers: [new LocalKeyProvider({ home: keystore })] } });
        expect(info.job, `vm info after a crash at ${point}`).toMatchObject({ operation: 'encrypt', steps: 4 });
      }
      const again = run('encrypt', vm);
      expect(again.status, `re-run after a crash at ${point}: ${again.stderr}`).toBe(0);
      expect(existsSync(join(vm, VM_JOB_NAME))).toBe(false);
      const info = await inspectVm(vm, { keys: { providers: [new LocalKeyProvider({ home: keystore })] } });
      expect(info, `after a crash at ${point}`).toMatchObject({ configEncrypted: true, encryptedDisks: 2, mixed: false });
      await decryptVmFolder(vm, { keys: { providers: [new LocalKeyProvider({ home: keystore })] } });
      await expectOriginal(vm, `after a crash at ${point}`);
    }
    // Crashes landed with no step done (in the first disk), after one disk, after both disks, and
    // after the disks and the .nvram (before the .vmx).
    expect([...seen].sort()).toEqual(expect.arrayContaining([0, 1, 2, 3]));
  });
});

describe('power loss during vm decrypt DIR, then the same call again', { timeout: TIMEOUT }, () => {
  it('finishes the job from every crash point', async () => {
    const encrypted = join(tmp.dir, 'encrypted');
    cpSync(template, encrypted, { recursive: true });
    await encryptVmFolder(encrypted, { provider: new LocalKeyProvider({ home: keystore }) });
    const copy = (): string => {
      const vm = join(tmp.dir, `dec${n++}`);
      cpSync(encrypted, vm, { recursive: true });
      return vm;
    };
    const dry = run('decrypt', copy());
    expect(dry.status, dry.stderr).toBe(0);
    expect(dry.steps).toHaveLength(4);
    for (const point of points(dry.steps, dry.events, 'few')) {
      const vm = copy();
      const crashed = run('decrypt', vm, point);
      expect(crashed.signal, `crash at ${point}: ${crashed.stderr}`).toBe('SIGKILL');
      const again = run('decrypt', vm);
      expect(again.status, `re-run after a crash at ${point}: ${again.stderr}`).toBe(0);
      await expectOriginal(vm, `after a crash at ${point}`);
    }
  });
});
