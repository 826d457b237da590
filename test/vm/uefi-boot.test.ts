// A real UEFI boot through vmseal (issue 12): a qemu VM folder (vmseal-vm.json) whose disk and UEFI
// variables (a copy of OVMF's template) are encrypted by `vmseal vm encrypt`, served by `vmseal serve
// --vm`: qemu-system-x86_64 -machine q35 with OVMF's code as pflash unit 0 and the export
// `<name>-vars` as pflash unit 1, the kernel given with -kernel/-initrd (OVMF loads it from fw_cfg),
// the root disk the disk's export. The guest (test/helpers/vm.ts) writes to its disk and prints its
// marker; OVMF writes its variables (boot options, counters) through the vars export: they differ
// from the template when read back through vmseal, and the state file at rest holds none of the
// template's or the new variables' plaintext.
//
// Debian's OVMF under TCG: about 70 s from qemu's start to power-off, measured on a loaded 2-core
// machine; the timeouts allow for more. Needs 512 MiB: with 256 the kernel runs out of memory
// unpacking Debian's initrd under OVMF. Before the vars export was write-back this boot did not end
// in 280 s: OVMF writes its flash a byte at a time (src/vm/state-file-image.ts).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cleanEnv, json, qemuImg, vmseal, type CliResult } from '../cli/run-cli.js';
import {
  bootFromNbd,
  consoleTail,
  driveValue,
  findVmTools,
  GUEST_DONE,
  killRunningVms,
  makeGuestImage,
  probeAccel,
  type Accel,
  type VmTools,
} from '../helpers/vm.js';
import { startServeCli, stopServe, type ServeChild } from './serve-cli.js';

const execFileP = promisify(execFile);

const OVMF_CODE = '/usr/share/OVMF/OVMF_CODE_4M.fd';
const OVMF_VARS = '/usr/share/OVMF/OVMF_VARS_4M.fd';

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A string as UEFI stores a variable name: UTF-16LE. */
function utf16(s: string): Buffer {
  return Buffer.from(s, 'utf16le');
}

let tools: VmTools | undefined;
let toolsError: unknown;
try {
  tools = findVmTools();
  if (!existsSync(OVMF_CODE) || !existsSync(OVMF_VARS)) throw new Error(`a UEFI boot needs ${OVMF_CODE} and ${OVMF_VARS}: install ovmf (as .ci/run does)`);
} catch (e) {
  tools = undefined;
  toolsError = e;
}
const accel: Accel | null = tools ? await probeAccel(tools, { uefi: { code: OVMF_CODE, varsTemplate: OVMF_VARS } }) : 'tcg';
if (accel === null) console.warn('uefi-boot: skipped: qemu-system-x86_64 starts neither with KVM (/dev/kvm) nor with TCG here');

describe.skipIf(accel === null)('a UEFI VM (OVMF) boots with its disk and its variables served by `vmseal serve --vm`', () => {
  let dir: string;
  let env: NodeJS.ProcessEnv;
  let server: ServeChild | undefined;

  beforeAll(async () => {
    if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
      throw new Error('dist/cli/main.js is missing: this test runs the built CLI; run `npm run build` first');
    }
    dir = await mkdtemp(join(tmpdir(), 'vmseal-uefi-boot-'));
    env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), XDG_RUNTIME_DIR: undefined });
  });

  afterAll(async () => {
    if (server) await stopServe(server);
    killRunningVms();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it(
    'OVMF boots the kernel, the guest writes its disk, OVMF writes its variables through the export; both encrypted at rest',
    { timeout: 300_000 },
    async () => {
      if (!tools) throw toolsError;
      const vm = join(dir, 'vm');
      await mkdir(vm);

      // 1. The VM folder: the guest's disk (a VMDK: vm encrypt encrypts disks in place), OVMF's
      // variables template, the manifest; then `vmseal vm encrypt` with the local key provider.
      const guest = await makeGuestImage(tools, join(dir, 'guest.raw'));
      await qemuImg(['convert', '-q', '-f', 'raw', '-O', 'vmdk', guest.path, join(vm, 'disk0.vmdk')]);
      await rm(guest.path);
      const template = await readFile(OVMF_VARS);
      // The plaintext markers looked for at rest: the firmware volume's signature is in the template.
      expect(template.includes(Buffer.from('_FVH'))).toBe(true);
      await copyFile(OVMF_VARS, join(vm, 'OVMF_VARS.fd'));
      await writeFile(
        join(vm, 'vmseal-vm.json'),
        JSON.stringify({ format: 'vmseal-vm', version: 1, name: 'uefi1', disks: [{ file: 'disk0.vmdk' }], uefiVars: { file: 'OVMF_VARS.fd' } }),
      );
      ok(await vmseal(['vm', 'encrypt', vm], env, { timeoutMs: 120_000 }));
      expect((await readFile(join(vm, 'OVMF_VARS.fd'))).includes(Buffer.from('_FVH'))).toBe(false);

      // 2. Serve the VM: the disk and uefi1-vars, on a Unix socket in a private folder.
      const run = join(dir, 'run');
      await mkdir(run, { mode: 0o700 });
      const sock = join(run, 'nbd.sock');
      server = await startServeCli(['--vm', vm, '--socket', sock], env);
      expect([...server.exports.keys()].sort()).toEqual(['disk0', 'uefi1-vars']);
      const varsUri = server.exports.get('uefi1-vars')!.uri;
      expect(varsUri).toBe(`nbd+unix:///uefi1-vars?socket=${sock}`);

      // 3. Boot: q35, OVMF's code read-only, the variables from the export.
      const started = Date.now();
      const run1 = await bootFromNbd(tools, accel!, server.exports.get('disk0')!.uri, 280_000, {
        memoryMiB: 512,
        extraArgs: [
          ...['-machine', 'q35'],
          ...['-drive', `if=pflash,unit=0,format=raw,readonly=on,file=${driveValue(OVMF_CODE)}`],
          ...['-drive', `if=pflash,unit=1,format=raw,file=${driveValue(varsUri)}`],
        ],
      });
      const seconds = (Date.now() - started) / 1000;
      console.log(`uefi-boot: qemu ran ${seconds.toFixed(1)} s (${accel})`);
      const why = `qemu ${run1.timedOut ? 'timed out' : `exited ${run1.code ?? run1.signal}`}; console:\n${consoleTail(run1)}\nserver stderr:\n${server.stderr()}`;
      expect(run1.timedOut, why).toBe(false);
      expect(run1.console, why).toContain(GUEST_DONE);
      expect(run1.code, why).toBe(0);

      // 4. The variables OVMF wrote, read through vmseal (the export: plaintext only in memory).
      const { stdout: vars } = await execFileP('nbdcopy', [varsUri, '-'], { encoding: 'buffer', maxBuffer: 8 * 1024 * 1024 });
      expect(vars.length).toBe(template.length);
      expect(vars.equals(template), 'OVMF wrote no variable through the export').toBe(false);
      expect(vars.includes(Buffer.from('_FVH'))).toBe(true);
      // OVMF records its boot options on a first boot; the template has none.
      const written = ['BootOrder', 'Boot0000'].filter((n) => vars.includes(utf16(n)) && !template.includes(utf16(n)));
      expect(written.length, 'no boot option variable in the variables read back').toBeGreaterThan(0);

      // 5. A clean stop; then the files at rest: no plaintext of the template or of what OVMF wrote.
      expect(await stopServe(server), server.stderr()).toEqual({ code: 0, signal: null });
      const atRest = await readFile(join(vm, 'OVMF_VARS.fd'));
      for (const marker of [Buffer.from('_FVH'), ...written.map(utf16)]) expect(atRest.includes(marker), `the vars file holds ${String(marker)}`).toBe(false);
      expect((await readFile(join(vm, 'disk0.vmdk'))).includes(Buffer.from(GUEST_DONE))).toBe(false);
      expect(json(ok(await vmseal(['verify', join(vm, 'disk0.vmdk'), '--json'], env)))).toMatchObject({ ok: true, encrypted: true });
    },
  );
});
