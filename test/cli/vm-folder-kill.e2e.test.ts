// A `vmseal vm encrypt DIR` killed with SIGKILL while it encrypts a disk is finished by running the
// same command again; meanwhile `vm info` says a job is interrupted and `vm decrypt` refuses. Checked
// by hashes of the disk contents (qemu-img convert -O raw) and of the plain files after vm decrypt.
// (Crash points all through the job, with power loss simulated: test/vm/folder-crash.test.ts.)
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VM_JOB_NAME } from '../../src/vm/index.js';
import { cleanEnv, expectOneLineError, json, qemuContentHash, qemuImg, sha256File, vmseal, vmsealChild, type CliResult } from './run-cli.js';

let dir: string;
let vm: string;
let env: NodeJS.ProcessEnv;
const plain: Record<string, string> = {};
const FILES = ['web.vmx', 'web.nvram'];

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

async function contentHash(path: string): Promise<string> {
  return qemuContentHash(path, join(dir, 'scratch.raw'));
}

beforeAll(async () => {
  if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
    throw new Error('dist/cli/main.js is missing: these tests run the built CLI; run `npm run build` first');
  }
  dir = await mkdtemp(join(tmpdir(), 'vmseal-vm-kill-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
  vm = join(dir, 'vm');
  await mkdir(vm);
  // A first disk big enough that the kill lands while it is being encrypted, and a second one.
  await writeFile(join(dir, 'big.raw'), randomBytes(32 << 20));
  await qemuImg(['convert', '-O', 'vmdk', join(dir, 'big.raw'), join(vm, 'disk0.vmdk')]);
  await writeFile(join(dir, 'small.raw'), Buffer.concat([randomBytes(1 << 20), Buffer.alloc(1 << 20)]));
  await qemuImg(['convert', '-O', 'vmdk', join(dir, 'small.raw'), join(vm, 'data.vmdk')]);
  await writeFile(join(vm, 'web.vmx'), 'displayName = "web"\nscsi0:0.fileName = "disk0.vmdk"\nscsi0:1.fileName = "data.vmdk"\n');
  await writeFile(join(vm, 'web.nvram'), randomBytes(100_000));
  for (const d of ['disk0.vmdk', 'data.vmdk']) plain[d] = await contentHash(join(vm, d));
  for (const f of FILES) plain[f] = await sha256File(join(vm, f));
}, 60_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('a killed vm encrypt', () => {
  it('is finished by running vm encrypt again; vm info says a job is interrupted meanwhile', async () => {
    const child = vmsealChild(['vm', 'encrypt', vm], env);
    const exited = new Promise<void>((done) => child.on('close', () => done()));
    // Killed as soon as the first disk's in-place journal exists (the job is then in that disk).
    const journal = join(vm, 'disk0.vmdk.vmseal-journal');
    for (let i = 0; i < 20_000 && !existsSync(journal); i++) await new Promise((r) => setTimeout(r, 2));
    child.kill('SIGKILL');
    await exited;
    expect(child.signalCode).toBe('SIGKILL');
    expect(existsSync(join(vm, VM_JOB_NAME))).toBe(true);
    const info = json(ok(await vmseal(['vm', 'info', vm, '--json'], env)));
    expect(info.job).toMatchObject({ operation: 'encrypt', steps: 4, stepsDone: 0 });
    expect(ok(await vmseal(['vm', 'info', vm], env)).stdout).toContain('An interrupted vm encrypt');
    // vm decrypt refuses while the encrypt is unfinished.
    const other = await vmseal(['vm', 'decrypt', vm], env);
    expect(other.code).toBe(1);
    expect(expectOneLineError(other)).toContain('interrupted vm encrypt');

    const done = json(ok(await vmseal(['vm', 'encrypt', vm, '--json'], env)));
    expect(done.resumed).toBe(true);
    expect(done.steps.map((s: { kind: string }) => s.kind)).toEqual(['disk', 'disk', 'state', 'config']);
    expect(existsSync(join(vm, VM_JOB_NAME))).toBe(false);
    ok(await vmseal(['vm', 'decrypt', vm], env));
    for (const d of ['disk0.vmdk', 'data.vmdk']) expect(await contentHash(join(vm, d)), d).toBe(plain[d]);
    for (const f of FILES) expect(await sha256File(join(vm, f)), f).toBe(plain[f]);
  }, 60_000);
});
