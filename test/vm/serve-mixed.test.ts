// The all-or-none rule for `vmseal serve DISK…` (issue 12): a disk that the vmseal-vm.json or the one
// .vmx of its folder names belongs to that VM, and a mixed VM's disks are refused as `serve --vm`
// refuses them (ERR_VM_MIXED, exit 5, the disks in each state listed) unless --allow-mixed. A disk the
// folder's VM does not name, or in a folder with no VM, is served as before. The built CLI, the local
// key provider in a temp VMSEAL_HOME, qemu-img disks.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, expectOneLineError, qemuImg, vmseal, type CliResult } from '../cli/run-cli.js';
import { startServeCli, stopServe } from './serve-cli.js';

let dir: string;
let env: NodeJS.ProcessEnv;
let sock: string;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A folder with an encrypted disk enc.vmdk, plain disks plain.vmdk and other.vmdk, and `config` files. */
async function folder(name: string, config: Record<string, string>): Promise<string> {
  const vm = join(dir, name);
  await mkdir(vm);
  await qemuImg(['create', '-q', '-f', 'vmdk', join(vm, 'plain.vmdk'), '1M']);
  await qemuImg(['create', '-q', '-f', 'vmdk', join(vm, 'other.vmdk'), '1M']);
  await qemuImg(['create', '-q', '-f', 'vmdk', join(dir, `${name}-src.vmdk`), '1M']);
  ok(await vmseal(['encrypt', join(dir, `${name}-src.vmdk`), join(vm, 'enc.vmdk')], env));
  for (const [file, text] of Object.entries(config)) await writeFile(join(vm, file), text);
  return vm;
}

const MANIFEST = JSON.stringify({ format: 'vmseal-vm', version: 1, name: 'q1', disks: [{ file: 'enc.vmdk' }, { file: 'plain.vmdk' }] });
const VMX = ['.encoding = "UTF-8"', 'displayName = "web"', 'scsi0:0.fileName = "plain.vmdk"', 'scsi0:1.fileName = "enc.vmdk"', ''].join('\n');

beforeAll(async () => {
  if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
    throw new Error('dist/cli/main.js is missing: these tests run the built CLI; run `npm run build` first');
  }
  dir = await mkdtemp(join(tmpdir(), 'vmseal-serve-mixed-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), XDG_RUNTIME_DIR: undefined });
  const run = join(dir, 'run');
  await mkdir(run, { mode: 0o700 });
  sock = join(run, 'nbd.sock');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('vmseal serve DISK… of a mixed VM', () => {
  it.each<{ kind: string; config: Record<string, string>; encrypted: string; plain: string }>([
    { kind: 'a qemu VM (vmseal-vm.json)', config: { 'vmseal-vm.json': MANIFEST }, encrypted: 'disks[0] (enc.vmdk)', plain: 'disks[1] (plain.vmdk)' },
    { kind: 'a VMware VM (.vmx)', config: { 'web.vmx': VMX }, encrypted: 'scsi0:1', plain: 'scsi0:0' },
  ])(
    '$kind: each of its disks is refused (ERR_VM_MIXED) unless --allow-mixed; a disk it does not name is served',
    async ({ kind, config, encrypted, plain }) => {
      const vm = await folder(kind.startsWith('a qemu') ? 'qemu' : 'vmware', config);
      for (const disk of ['enc.vmdk', 'plain.vmdk']) {
        const r = await vmseal(['serve', join(vm, disk), '--socket', sock], env);
        expect(r.code, r.stderr).toBe(5);
        const line = expectOneLineError(r);
        expect(line).toContain('refuses the mixed VM');
        expect(line).toContain(`encrypted disks: ${encrypted}`);
        expect(line).toContain(`plain disks: ${plain}`);
        expect(line).toContain('--allow-mixed');
      }
      // --allow-mixed serves them; a disk the VM does not name needs no option.
      for (const args of [[join(vm, 'plain.vmdk'), '--allow-mixed'], [join(vm, 'other.vmdk')]]) {
        const s = await startServeCli([...args, '--socket', sock], env);
        expect(s.exports.size).toBe(1);
        expect(await stopServe(s), s.stderr()).toEqual({ code: 0, signal: null });
      }
    },
  );
});
