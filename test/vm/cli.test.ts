// `vmseal vm encrypt|decrypt --config-only` and `vmseal vm info`, run as a user would (the built CLI in a
// child process), on a VM folder with qemu-img disks, a vmseal-encrypted disk, a disk with VMware's
// encryption lines, and the local keystore in a temporary VMSEAL_HOME.
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createCipheriv, createHmac, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmxFile } from '../../src/vm/vmx-file.js';
import { cleanEnv, expectOneLineError, json, qemuImg, vmseal, vmsealOnTty, type CliResult } from '../cli/run-cli.js';
import { keySafeFromJohn, vectors } from '../keys/helpers.js';
import { VMWARE_ENCRYPTED_DESCRIPTOR } from './helpers.js';

let dir: string;
let vm: string;
let vmxPath: string;
let env: NodeJS.ProcessEnv;
let pwFile: string;
let wrongPwFile: string;
const PLAIN_VMX = [
  '.encoding = "UTF-8"',
  'config.version = "8"',
  'virtualHW.version = "18"',
  '# disks',
  'scsi0:0.fileName = "plain.vmdk"',
  'scsi0:0.present = "TRUE"',
  'nvme0:0.fileName = "enc.vmdk"',
  'displayName = "Test VM"',
  'sata0:0.fileName = "vmware.vmdk"',
  'ide1:0.deviceType = "cdrom-image"',
  'ide1:0.fileName = "install.iso"',
  '',
].join('\r\n');

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

beforeAll(async () => {
  if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
    throw new Error('dist/cli/main.js is missing: these tests run the built CLI; run `npm run build` first');
  }
  dir = await mkdtemp(join(tmpdir(), 'vmseal-vm-cli-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
  vm = join(dir, 'vm');
  await mkdir(vm);
  await qemuImg(['create', '-q', '-f', 'vmdk', join(vm, 'plain.vmdk'), '4M']);
  await qemuImg(['create', '-q', '-f', 'vmdk', join(dir, 'src.vmdk'), '4M']);
  ok(await vmseal(['encrypt', join(dir, 'src.vmdk'), join(vm, 'enc.vmdk')], env));
  await writeFile(join(vm, 'vmware.vmdk'), VMWARE_ENCRYPTED_DESCRIPTOR);
  vmxPath = join(vm, 'Test VM.vmx');
  await writeFile(vmxPath, PLAIN_VMX);
  await chmod(vmxPath, 0o640);
  pwFile = join(dir, 'pw');
  await writeFile(pwFile, 'a long VM passphrase\n');
  wrongPwFile = join(dir, 'wrong');
  await writeFile(wrongPwFile, 'not the VM passphrase\n');
}, 60_000);
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function vmxBytes(): Promise<Buffer> {
  return readFile(vmxPath);
}

describe('vmseal vm', () => {
  it("info on a plain configuration prints VMware's lines, each disk's state, and that the VM is mixed", async () => {
    const r = ok(await vmseal(['vm', 'info', vm], env));
    expect(r.stdout).toBe(
      [
        'VM configuration files are not encrypted.',
        'Encrypted hard disks: nvme0:0, sata0:0 (2 of 3).',
        'The VM is mixed: some hard disks are encrypted and some are not (VMware requires all or none).',
        '',
        `configuration: ${vmxPath}`,
        'scsi0:0: plain.vmdk: not encrypted',
        'nvme0:0: enc.vmdk: encrypted by vmseal',
        'sata0:0: vmware.vmdk: encrypted by VMware (not readable by vmseal)',
        '',
      ].join('\n'),
    );
    const j = json(ok(await vmseal(['vm', 'info', vmxPath, '--json'], env)));
    // A disk that cannot be read is not reported as plain.
    const lost = join(dir, 'lost');
    await mkdir(lost);
    await writeFile(join(lost, 'lost.vmx'), 'scsi0:0.fileName = "gone.vmdk"\n');
    expect(
      ok(await vmseal(['vm', 'info', lost], env))
        .stdout.split('\n')
        .slice(0, 2),
    ).toEqual(['VM configuration files are not encrypted.', 'No hard disks are known to be encrypted (1 of 1 missing or unreadable).']);
    expect(j).toMatchObject({ ok: true, command: 'vm info', vmx: vmxPath, configEncrypted: false, encryptedDisks: 2, mixed: true });
    expect(j.disks.map((d: { state: string }) => d.state)).toEqual(['plain', 'vmseal', 'vmware']);
  });

  it('encrypt --config-only with the local keystore and a passphrase, then info, then decrypt gives the .vmx back byte for byte with its mode', async () => {
    // --pbkdf2-rounds: a passphrase locker at 1,000 rounds is cheap to make and open (and the rounds land in it).
    const fast = ['--pbkdf2-rounds', '1000'];
    const r = ok(await vmseal(['vm', 'encrypt', vm, '--config-only', '--recovery-passphrase', '--passphrase-file', pwFile, ...fast, '--json'], env));
    expect(json(r)).toMatchObject({ ok: true, command: 'vm encrypt', vmx: vmxPath, configOnly: true });
    expect(json(r).lockers.map((l: { kind: string }) => l.kind)).toEqual(['provider', 'passphrase']);
    expect(json(r).lockers[1].kdf).toEqual({ name: 'PBKDF2-HMAC-SHA-256', rounds: 1000 });
    const enc = VmxFile.parse(await vmxBytes());
    expect(enc.lines.map((l) => l.key)).toEqual(['.encoding', 'displayName', 'encryption.keySafe', 'encryption.data']);
    expect((await stat(vmxPath)).mode & 0o777).toBe(0o640);
    expect(existsSync(`${vmxPath}.vmseal-lock`)).toBe(false);

    // The local keystore opens it: the disks are listed.
    const info = ok(await vmseal(['vm', 'info', vm], env)).stdout.split('\n');
    expect(info.slice(0, 2)).toEqual(['VM configuration files are encrypted.', 'Encrypted hard disks: nvme0:0, sata0:0 (2 of 3).']);
    // No keystore and no passphrase: it says the disks cannot be listed, and exits 0.
    const noKeys = ok(await vmseal(['vm', 'info', vm], cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home') })));
    expect(noKeys.stdout.split('\n').slice(0, 2)).toEqual([
      'VM configuration files are encrypted.',
      'Hard disks: not listed (they are named in the encrypted configuration, and no key given opens it).',
    ]);

    // Decrypt with the passphrase alone (another keystore): byte for byte, mode kept.
    const d = ok(await vmseal(['vm', 'decrypt', vmxPath, '--config-only', '--passphrase-file', pwFile], cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home') })));
    expect(d.stdout).toBe(`Decrypted the configuration of ${vmxPath} (opened with the passphrase)\n`);
    expect((await vmxBytes()).toString()).toBe(PLAIN_VMX);
    expect((await stat(vmxPath)).mode & 0o777).toBe(0o640);
  });

  it("--workstation locks with a passphrase alone in Workstation's construction; a wrong passphrase exits 3 and leaves the file as it was", async () => {
    ok(await vmseal(['vm', 'encrypt', vm, '--config-only', '--workstation', '--passphrase-file', pwFile], env));
    const encrypted = await vmxBytes();
    const ks = VmxFile.parse(encrypted).get('encryption.keySafe')!;
    expect(ks).toMatch(
      /^vmware:key\/list\/\(pair\/\(phrase\/[A-Za-z0-9%]+\/pass2key%3dPBKDF2%2dHMAC%2dSHA%2d1%3acipher%3dAES%2d256%3arounds%3d10000%3asalt%3d[A-Za-z0-9%]+,HMAC%2dSHA%2d1,[A-Za-z0-9%]+\)\)$/,
    );

    const wrong = await vmseal(['vm', 'decrypt', vm, '--config-only', '--passphrase-file', wrongPwFile], env);
    expect(wrong.code).toBe(3);
    expect(expectOneLineError(wrong)).toMatch(/^vmseal: cannot decrypt the VM .*: wrong passphrase.* `vmseal vm info VM` lists the lockers\.$/);
    expect((await vmxBytes()).equals(encrypted)).toBe(true);

    // No passphrase and no terminal: it is needed (only a phrase locker opens it), and cannot be asked for.
    const none = await vmseal(['vm', 'decrypt', vm, '--config-only'], env);
    expect(none.code).not.toBe(0);
    expect((await vmxBytes()).equals(encrypted)).toBe(true);

    ok(await vmseal(['vm', 'decrypt', vm, '--config-only', '--passphrase-file', pwFile], env));
    expect((await vmxBytes()).toString()).toBe(PLAIN_VMX);
  });

  it("--workstation --pbkdf2-rounds warns only below Workstation's own default of 10,000 rounds", async () => {
    const above = await vmseal(['vm', 'encrypt', vm, '--config-only', '--workstation', '--passphrase-file', pwFile, '--pbkdf2-rounds', '20000'], env);
    ok(above);
    expect(above.stderr).not.toMatch(/below the default/);
    expect(VmxFile.parse(await vmxBytes()).get('encryption.keySafe')).toMatch(/pass2key%3dPBKDF2%2dHMAC%2dSHA%2d1%3acipher%3dAES%2d256%3arounds%3d20000%3a/);
    ok(await vmseal(['vm', 'decrypt', vm, '--config-only', '--passphrase-file', pwFile], env));
    const below = await vmseal(['vm', 'encrypt', vm, '--config-only', '--workstation', '--passphrase-file', pwFile, '--pbkdf2-rounds', '5000'], env);
    ok(below);
    expect(below.stderr).toMatch(/warning: --pbkdf2-rounds 5000 is below the default 10000/);
    ok(await vmseal(['vm', 'decrypt', vm, '--config-only', '--passphrase-file', pwFile], env));
  });

  it('on a terminal, --workstation asks for the new passphrase twice and decrypt asks for it once, never echoing it', async () => {
    const typed = 'typed VM passphrase';
    const e = await vmsealOnTty(['vm', 'encrypt', vm, '--config-only', '--workstation'], env, [
      ['Enter the new passphrase of the VM: ', `${typed}\r`],
      ['Repeat the new passphrase of the VM: ', `${typed}\r`],
    ]);
    expect(e.unanswered).toEqual([]);
    expect(e.code, e.transcript).toBe(0);
    expect(e.transcript).not.toContain(typed);
    // Only a passphrase opens it: decrypt asks without being told to.
    const d = await vmsealOnTty(['vm', 'decrypt', vm, '--config-only'], env, [[`Enter the passphrase of ${vmxPath}`, `${typed}\r`]]);
    expect(d.unanswered).toEqual([]);
    expect(d.code, d.transcript).toBe(0);
    expect(d.transcript).not.toContain(typed);
    expect((await vmxBytes()).toString()).toBe(PLAIN_VMX);
  });

  it('decrypts a .vmx locked by the public John the Ripper vector, and warns that dataFileKey is then in the clear', async () => {
    const v = vectors.john[0]!;
    const key = Buffer.from(/key=(.*)$/.exec(v.dict)![1]!.replace(/%3d/g, '='), 'base64');
    const text = Buffer.from('config.version = "8"\ndataFileKey = "type=key:cipher=AES-256:key=AAAA"\n');
    const iv = randomBytes(16);
    const c = createCipheriv('aes-256-cbc', key, iv);
    const data = Buffer.concat([iv, c.update(text), c.final(), createHmac('sha1', key).update(text).digest()]).toString('base64');
    const folder = join(dir, 'jtr');
    await mkdir(folder);
    const file = join(folder, 'jtr.vmx');
    await writeFile(file, `.encoding = "UTF-8"\ndisplayName = "JtR"\nencryption.keySafe = "${keySafeFromJohn(v.hash)}"\nencryption.data = "${data}"\n`);
    const pw = join(dir, 'openwall');
    await writeFile(pw, `${v.password}\n`);
    const r = ok(await vmseal(['vm', 'decrypt', folder, '--config-only', '--passphrase-file', pw], env));
    expect(r.stderr).toContain('now holds dataFileKey in the clear');
    expect((await readFile(file)).toString()).toBe(`.encoding = "UTF-8"\ndisplayName = "JtR"\n${text.toString()}`);
  });

  it('refuses by exit code: --workstation without --config-only 2, already encrypted 5, not encrypted 5, no .vmx 1, VM running 7', async () => {
    const noFlag = await vmseal(['vm', 'encrypt', vm, '--workstation'], env);
    expect(noFlag.code).toBe(2);
    expect(expectOneLineError(noFlag)).toContain('give --config-only with it');
    const notEncrypted = await vmseal(['vm', 'decrypt', vm, '--config-only'], env);
    expect(notEncrypted.code).toBe(5);
    ok(await vmseal(['vm', 'encrypt', vm, '--config-only'], env));
    const twice = await vmseal(['vm', 'encrypt', vm, '--config-only'], env);
    expect(twice.code).toBe(5);
    expect(expectOneLineError(twice)).toContain('is already encrypted');
    const empty = join(dir, 'no-vmx');
    await mkdir(empty);
    expect((await vmseal(['vm', 'info', empty], env)).code).toBe(1);
    await mkdir(`${vmxPath}.lck`);
    const running = await vmseal(['vm', 'decrypt', vm, '--config-only'], env);
    expect(running.code).toBe(7);
    expect(expectOneLineError(running)).toContain('power off the virtual machine first');
    await rm(`${vmxPath}.lck`, { recursive: true });
    ok(await vmseal(['vm', 'decrypt', vm, '--config-only'], env));
    expect((await vmxBytes()).toString()).toBe(PLAIN_VMX);
  });
});
