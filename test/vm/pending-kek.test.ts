// A crash between making the VM's new KEK and recording it in the job file (issue 12) no longer
// leaves an unused KEK: the job file records the key's name first, and the next run finds the key
// made under that name and uses it. The crash is a provider whose createKey makes the key in the
// real local keystore and then throws, before vm encrypt can write the job file again.
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeKeySafe, LocalKeyProvider, type CreateKeyOptions, type KeyRef } from '../../src/keys/index.js';
import { readEncryptionParams } from '../../src/disk/index.js';
import { encryptVmFolder, readStateFileHeader, rekeyVm, VM_JOB_NAME } from '../../src/vm/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-pending-kek-');
});
afterAll(() => tmp.cleanup());

/** The local keystore, dying right after a key is made (the process killed between the two writes). */
class DiesAfterCreate extends LocalKeyProvider {
  override async createKey(opts?: CreateKeyOptions): Promise<KeyRef> {
    await super.createKey(opts);
    throw new Error('simulated crash after the KEK was made');
  }
}

/** A qemu VM folder with one qemu-img disk and a UEFI variables file. */
function vmFolder(name: string): string {
  const vm = join(tmp.dir, name);
  mkdirSync(vm);
  writeFileSync(join(tmp.dir, `${name}.raw`), randomBytes(1 << 20));
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', join(tmp.dir, `${name}.raw`), join(vm, 'd0.vmdk')]);
  writeFileSync(join(vm, 'OVMF_VARS.fd'), randomBytes(65_536));
  writeFileSync(
    join(vm, 'vmseal-vm.json'),
    JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'd0.vmdk' }], uefiVars: { file: 'OVMF_VARS.fd' } }),
  );
  return vm;
}

describe('vm encrypt: the VM KEK is recorded before it is made', () => {
  it('a run killed right after making the KEK leaves its name in the job file; the next run reuses that key, making no other', async () => {
    const home = join(tmp.dir, 'home');
    const vm = join(tmp.dir, 'vm');
    mkdirSync(vm);
    writeFileSync(join(tmp.dir, 'd.raw'), randomBytes(1 << 20));
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', join(tmp.dir, 'd.raw'), join(vm, 'd0.vmdk')]);
    writeFileSync(join(vm, 'OVMF_VARS.fd'), randomBytes(65_536));
    writeFileSync(
      join(vm, 'vmseal-vm.json'),
      JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'd0.vmdk' }], uefiVars: { file: 'OVMF_VARS.fd' } }),
    );

    await expect(encryptVmFolder(vm, { provider: new DiesAfterCreate({ home }) })).rejects.toThrow('simulated crash');
    const job = JSON.parse(readFileSync(join(vm, VM_JOB_NAME), 'utf8')) as { kek?: unknown; kekPending?: { providerId: string; name: string } };
    expect(job.kek).toBeUndefined();
    expect(job.kekPending).toMatchObject({ providerId: 'local', name: expect.stringMatching(/^vmseal-vm-kek-[0-9a-f-]{36}$/) });
    const provider = new LocalKeyProvider({ home });
    const made = await provider.list();
    expect(made.map((k) => k.name)).toEqual([job.kekPending!.name]);

    const r = await encryptVmFolder(vm, { provider });
    expect(r.resumed).toBe(true);
    expect(r.kek).toEqual({ providerId: 'local', keyId: made[0]!.keyId });
    expect((await provider.list()).map((k) => k.keyId)).toEqual([made[0]!.keyId]);
    // Every file is locked by that key.
    const lockerKeys = [
      ...describeKeySafe((await readEncryptionParams(join(vm, 'd0.vmdk')))!.keySafe),
      ...describeKeySafe((await readStateFileHeader(join(vm, 'OVMF_VARS.fd'))).keySafe),
    ].map((l) => l.keyId);
    expect(lockerKeys).toEqual([made[0]!.keyId, made[0]!.keyId]);
  });

  it('a resume of a job started with a recovery passphrase asks for it again (ERR_VM_RESUME_PASSPHRASE), and the reverse', async () => {
    const home = join(tmp.dir, 'home2');
    const recovery = [phraseLocker('a recovery passphrase for the VM')];
    const vm = vmFolder('vm2');
    await expect(encryptVmFolder(vm, { provider: new DiesAfterCreate({ home }), recovery })).rejects.toThrow('simulated crash');
    expect(JSON.parse(readFileSync(join(vm, VM_JOB_NAME), 'utf8'))).toMatchObject({ recoveryPassphrase: true });
    const provider = new LocalKeyProvider({ home });
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({
      code: 'ERR_VM_RESUME_PASSPHRASE',
      message: expect.stringContaining('was started with a recovery passphrase, which vmseal does not store: give it again'),
    });
    const done = await encryptVmFolder(vm, { provider, recovery });
    expect(done.resumed).toBe(true);
    const kinds = describeKeySafe((await readEncryptionParams(join(vm, 'd0.vmdk')))!.keySafe).map((l) => l.kind);
    expect(kinds.sort()).toEqual(['passphrase', 'provider']);

    // Started without one, a resume that gives one is refused too: every file gets the same lockers.
    const vm3 = vmFolder('vm3');
    await expect(encryptVmFolder(vm3, { provider: new DiesAfterCreate({ home }) })).rejects.toThrow('simulated crash');
    await expect(encryptVmFolder(vm3, { provider, recovery })).rejects.toMatchObject({
      code: 'ERR_VM_RESUME_PASSPHRASE',
      message: expect.stringContaining('was started without a recovery passphrase'),
    });
    await encryptVmFolder(vm3, { provider });
  });
});

describe('vm rekey --deep: the new VM KEK is recorded before it is made', () => {
  it('a run killed right after making the KEK leaves its name in the job file; the next run reuses that key', async () => {
    const home = join(tmp.dir, 'home4');
    const vm = vmFolder('vm4');
    const provider = new LocalKeyProvider({ home });
    const first = await encryptVmFolder(vm, { provider });
    await expect(rekeyVm(vm, { mode: 'deep', keys: { providers: [provider] }, provider: new DiesAfterCreate({ home }) })).rejects.toThrow('simulated crash');
    const job = JSON.parse(readFileSync(join(vm, VM_JOB_NAME), 'utf8')) as { kek?: unknown; kekPending?: { providerId: string; name: string } };
    expect(job.kek).toBeUndefined();
    expect(job.kekPending).toMatchObject({ providerId: 'local', name: expect.stringMatching(/^vmseal-vm-kek-[0-9a-f-]{36}$/) });
    const made = (await provider.list()).filter((k) => k.name === job.kekPending!.name);
    expect(made).toHaveLength(1);

    const r = await rekeyVm(vm, { mode: 'deep', keys: { providers: [provider] }, provider });
    expect(r.resumed).toBe(true);
    expect(r.kek).toEqual({ providerId: 'local', keyId: made[0]!.keyId });
    // No third key: the old VM KEK and the one the killed run made.
    expect((await provider.list()).map((k) => k.keyId).sort()).toEqual([first.kek!.keyId, made[0]!.keyId].sort());
    const lockerKeys = describeKeySafe((await readEncryptionParams(join(vm, 'd0.vmdk')))!.keySafe).map((l) => l.keyId);
    expect(lockerKeys).toEqual([made[0]!.keyId]);
  });
});
