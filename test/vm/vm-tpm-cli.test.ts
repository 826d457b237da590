// `vmseal vm tpm DIR` as a user runs it: the first start seals the state key under the KEK of the
// VM's encrypted disk (one KEK per VM), prints the qemu options and the tpm2-tools TCTI, serves the
// TPM until SIGTERM and then exits 0 with its sockets removed; a missing manifest and a state key
// that is not the state's end with their exit codes (5, 3).
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readEncryptionParams } from '../../src/disk/index.js';
import { describeKeySafe, LocalKeyProvider, sealDek } from '../../src/keys/index.js';
import { readManifest, writeManifest } from '../../src/vm/index.js';
import { cleanEnv, qemuImg, vmseal, vmsealChild } from '../cli/run-cli.js';
import { tempDir } from '../disk/helpers.js';

const execFileAsync = promisify(execFile);
const have = (exe: string) => spawnSync('sh', ['-c', `command -v ${exe}`]).status === 0;
const tools = have('swtpm') && have('swtpm_setup') && have('tpm2_getrandom') && have('qemu-img');

let tmp: ReturnType<typeof tempDir>;
let home: string;
let vmDir: string;
let env: NodeJS.ProcessEnv;

beforeAll(() => {
  tmp = tempDir('vmseal-vmtpm-cli-');
  home = join(tmp.dir, 'home');
  vmDir = join(tmp.dir, 'vm1');
  mkdirSync(vmDir);
  env = cleanEnv({ VMSEAL_HOME: home });
});
afterAll(() => tmp?.cleanup());

/** Lines of a child's stderr, and a way to wait for one matching a pattern. */
function watch(child: ReturnType<typeof vmsealChild>) {
  let text = '';
  const waiters: Array<{ re: RegExp; done: (m: RegExpExecArray) => void }> = [];
  child.stderr.on('data', (d: Buffer) => {
    text += d.toString();
    for (const w of waiters.splice(0)) {
      const m = w.re.exec(text);
      if (m) w.done(m);
      else waiters.push(w);
    }
  });
  return {
    text: () => text,
    waitFor: (re: RegExp) =>
      new Promise<RegExpExecArray>((resolve, reject) => {
        const m = re.exec(text);
        if (m) return resolve(m);
        waiters.push({ re, done: resolve });
        child.once('exit', (code) => reject(new Error(`vmseal exited (${code}) before ${re}: ${text}`)));
      }),
  };
}

describe.skipIf(!tools)('vmseal vm tpm', () => {
  it('runs the vTPM under the KEK of the VM disk, prints the qemu options, stops on SIGTERM', async () => {
    await qemuImg(['create', '-f', 'raw', join(tmp.dir, 'disk.raw'), '4M']);
    const enc = await vmseal(['encrypt', join(tmp.dir, 'disk.raw'), join(vmDir, 'disk.vmdk')], env);
    expect(enc.code, enc.stderr).toBe(0);
    writeFileSync(join(vmDir, 'vmseal-vm.json'), JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'disk.vmdk' }], tpm: { state: 'tpm' } }));

    const child = vmsealChild(['vm', 'tpm', vmDir, '--tools'], env);
    const out = watch(child);
    try {
      const qemu = await out.waitFor(
        /qemu options: (-chardev socket,id=chrtpm,path=(\S+) -tpmdev emulator,id=tpm0,chardev=chrtpm -device tpm-tis,tpmdev=tpm0)/,
      );
      const [, , ctrl] = qemu;
      const [, tcti] = await out.waitFor(/TPM2TOOLS_TCTI=(swtpm:path=\S+)/);
      expect(existsSync(ctrl!)).toBe(true);
      const { stdout } = await execFileAsync('tpm2_getrandom', ['--hex', '8'], { env: { ...process.env, TPM2TOOLS_TCTI: tcti! } });
      expect(stdout).toMatch(/^[0-9a-f]{16}$/);

      // One KEK per VM: the state key is locked by the disk's KEK.
      const diskLocker = describeKeySafe((await readEncryptionParams(join(vmDir, 'disk.vmdk')))!.keySafe).find((l) => l.kind === 'provider')!;
      const tpmLocker = describeKeySafe((await readManifest(vmDir)).tpm!.keySafe!).find((l) => l.kind === 'provider')!;
      expect(tpmLocker.keyId).toBe(diskLocker.keyId);
      expect(out.text()).toContain('(made now)');

      child.kill('SIGTERM');
      const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      expect(code, out.text()).toBe(0);
      expect(existsSync(ctrl!)).toBe(false);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('a folder without a manifest: exit 5 (ERR_VM_MANIFEST) with what one looks like', async () => {
    const dir = join(tmp.dir, 'empty');
    mkdirSync(dir);
    const r = await vmseal(['vm', 'tpm', dir], env);
    expect(r.code).toBe(5);
    expect(r.stderr).toContain('vmseal-vm.json');
    expect(r.stderr).toContain('"format": "vmseal-vm"');
  });

  it('a state key that is not the state: exit 3 (ERR_VM_TPM_KEY)', async () => {
    const m = await readManifest(vmDir);
    const provider = new LocalKeyProvider({ home });
    try {
      const keyId = describeKeySafe(m.tpm!.keySafe!).find((l) => l.kind === 'provider')!.keyId!;
      const other = await sealDek(randomBytes(32), { cipher: 'AES-256', lockers: [{ kind: 'provider', provider, keyId }] });
      await writeManifest(vmDir, { ...m, tpm: { ...m.tpm!, keySafe: other } });
    } finally {
      await provider.close();
    }
    const r = await vmseal(['vm', 'tpm', vmDir], env);
    expect(r.code, r.stderr).toBe(3);
    expect(r.stderr).toContain('does not open with the state key');
    await writeManifest(vmDir, m);
  });
});
