// encryptVmFolder / decryptVmFolder in process: a qemu VM folder (vmseal-vm.json: disks and UEFI
// variables) round trip, and the refusals made before anything changes (a missing disk, a raw disk,
// a VMware-encrypted disk to decrypt, a damaged job file, the other operation's interrupted job).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalKeyProvider } from '../../src/keys/index.js';
import { decryptVmFolder, encryptVmFolder, isStateFile, listVmFolder, VM_JOB_NAME } from '../../src/vm/index.js';
import { tempDir } from '../disk/helpers.js';
import { contentHash, randomRaw, sha256, VMWARE_ENCRYPTED_DESCRIPTOR } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
let provider: LocalKeyProvider;
let template: string;
let n = 0;

function fresh(): string {
  const vm = join(tmp.dir, `vm${n++}`);
  cpSync(template, vm, { recursive: true });
  return vm;
}

beforeAll(() => {
  tmp = tempDir('vmseal-vm-folder-');
  provider = new LocalKeyProvider({ home: join(tmp.dir, 'home') });
  template = join(tmp.dir, 'template');
  mkdirSync(template);
  const raw = randomRaw(join(tmp.dir, 'd.raw'), 300_000);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', raw, join(template, 'd0.vmdk')]);
  writeFileSync(join(template, 'OVMF_VARS.fd'), randomBytes(540_672));
  writeFileSync(
    join(template, 'vmseal-vm.json'),
    JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'd0.vmdk' }], uefiVars: { file: 'OVMF_VARS.fd' } }),
  );
});
afterAll(() => tmp.cleanup());

describe('a qemu VM folder', () => {
  it('encrypts its disks and UEFI variables under one KEK (the manifest stays in the clear) and decrypts them back', async () => {
    const vm = fresh();
    const disk = await contentHash(join(vm, 'd0.vmdk'));
    const vars = sha256(readFileSync(join(vm, 'OVMF_VARS.fd')));
    const manifest = readFileSync(join(vm, 'vmseal-vm.json'));
    const enc = await encryptVmFolder(vm, { provider });
    expect(enc.steps.map((s) => [s.kind, s.outcome])).toEqual([
      ['disk', 'done'],
      ['state', 'done'],
    ]);
    const list = await listVmFolder(vm);
    expect(list.disks[0]!.state).toBe('vmseal');
    expect(list.stateFiles).toEqual([{ path: join(vm, 'OVMF_VARS.fd'), kind: 'uefi-vars', encrypted: true }]);
    expect(readFileSync(join(vm, 'vmseal-vm.json'))).toEqual(manifest);
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({ code: 'ERR_VMX_ENCRYPTED' });
    await decryptVmFolder(vm, { keys: { providers: [provider] } });
    expect(await contentHash(join(vm, 'd0.vmdk'))).toBe(disk);
    expect(sha256(readFileSync(join(vm, 'OVMF_VARS.fd')))).toBe(vars);
    expect(await isStateFile(join(vm, 'OVMF_VARS.fd'))).toBe(false);
    await expect(decryptVmFolder(vm, { keys: { providers: [provider] } })).rejects.toMatchObject({ code: 'ERR_VMX_NOT_ENCRYPTED' });
  });
});

describe('refused before anything changes', () => {
  const untouched = (vm: string): void => {
    expect(existsSync(join(vm, VM_JOB_NAME))).toBe(false);
    expect(readFileSync(join(vm, 'OVMF_VARS.fd'))).toEqual(readFileSync(join(template, 'OVMF_VARS.fd')));
  };
  const withDisks = (vm: string, disks: string[]): void =>
    writeFileSync(
      join(vm, 'vmseal-vm.json'),
      JSON.stringify({ format: 'vmseal-vm', version: 1, disks: disks.map((file) => ({ file })), uefiVars: { file: 'OVMF_VARS.fd' } }),
    );

  it('a missing disk, or a raw disk (no descriptor to carry a key): ERR_VM_DISK naming it', async () => {
    const vm = fresh();
    withDisks(vm, ['d0.vmdk', 'gone.vmdk']);
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({ code: 'ERR_VM_DISK', message: expect.stringContaining('gone.vmdk') });
    untouched(vm);
    writeFileSync(join(vm, 'd1.raw'), Buffer.alloc(65_536));
    withDisks(vm, ['d0.vmdk', 'd1.raw']);
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({ code: 'ERR_VM_DISK', message: expect.stringContaining('raw image') });
    untouched(vm);
    expect((await listVmFolder(vm)).disks[0]!.state).toBe('plain');
  });

  it('to decrypt, a disk VMware encrypted: ERR_VM_DISK', async () => {
    const vm = fresh();
    writeFileSync(join(vm, 'vmw.vmdk'), VMWARE_ENCRYPTED_DESCRIPTOR);
    withDisks(vm, ['d0.vmdk', 'vmw.vmdk']);
    await expect(decryptVmFolder(vm, { keys: { providers: [provider] } })).rejects.toMatchObject({
      code: 'ERR_VM_DISK',
      message: expect.stringContaining('encrypted by VMware'),
    });
  });

  it("a damaged job file, an interrupted job of the other operation, or another KEK than the interrupted job's: ERR_VM_JOB", async () => {
    const vm = fresh();
    writeFileSync(join(vm, VM_JOB_NAME), '{"format": "something else"}');
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({ code: 'ERR_VM_JOB' });
    writeFileSync(
      join(vm, VM_JOB_NAME),
      JSON.stringify({ format: 'vmseal-vm-job', version: 1, operation: 'decrypt', started: 'x', steps: [{ kind: 'disk', file: 'd0.vmdk', done: false }] }),
    );
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({ code: 'ERR_VM_JOB', message: expect.stringContaining('interrupted vm decrypt') });
    // An interrupted encrypt is finished under its own KEK only: another key id is refused, not mixed in.
    writeFileSync(
      join(vm, VM_JOB_NAME),
      JSON.stringify({
        format: 'vmseal-vm-job',
        version: 1,
        operation: 'encrypt',
        started: 'x',
        kek: { providerId: provider.id, keyId: 'the-first-runs-key' },
        steps: [{ kind: 'disk', file: 'd0.vmdk', done: false }],
      }),
    );
    await expect(encryptVmFolder(vm, { provider, keyId: 'another-key' })).rejects.toMatchObject({
      code: 'ERR_VM_JOB',
      message: expect.stringContaining('give the same key options as the first run'),
    });
    expect((await listVmFolder(vm)).disks[0]!.state).toBe('plain');
  });
});
