// The hard disks a .vmx names and the encryption state of each, read from real VMDKs (qemu-img,
// vmseal's own encrypted disks) and from descriptors carrying VMware's encryption lines.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedDisk } from '../../src/disk/index.js';
import { diskState, inspectVm, vmxDisks } from '../../src/vm/config-disks.js';
import { encryptVmx } from '../../src/vm/vmx-crypt.js';
import { VmxFile } from '../../src/vm/vmx-file.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { VMWARE_ENCRYPTED_DESCRIPTOR } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(async () => {
  tmp = tempDir('vmseal-vm-disks-');
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', join(tmp.dir, 'plain.vmdk'), '4M']);
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', join(tmp.dir, 'flat.vmdk'), '4M']);
  const enc = await createEncryptedDisk(join(tmp.dir, 'enc.vmdk'), { capacity: 4 << 20, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
  await enc.close();
  writeFileSync(join(tmp.dir, 'vmware.vmdk'), VMWARE_ENCRYPTED_DESCRIPTOR);
  writeFileSync(join(tmp.dir, 'raw.img'), Buffer.alloc(2 << 20));
  // vmseal's lines with a damaged value: unreadable, with the reason.
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', join(tmp.dir, 'damaged.vmdk'), '4M']);
  writeFileSync(
    join(tmp.dir, 'damaged.vmdk'),
    `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nencryption.format = "vmseal/9"\nRW 8192 FLAT "damaged-flat.vmdk" 0\n`,
  );
});
afterAll(() => tmp.cleanup());

describe('vmxDisks', () => {
  it('lists the hard disks of scsi, ide, sata and nvme, skipping absent devices, CD-ROMs and empty names', () => {
    const vmx = VmxFile.parse(
      Buffer.from(
        [
          'scsi0:0.fileName = "a.vmdk"',
          'scsi0:1.fileName = "gone.vmdk"',
          'scsi0:1.present = "FALSE"',
          'ide1:0.deviceType = "cdrom-image"',
          'ide1:0.fileName = "install.iso"',
          'sata0:1.deviceType = "cdrom-raw"',
          'sata0:1.fileName = "auto detect"',
          'NVME0:0.FILENAME = "/abs/b.vmdk"',
          'sata0:0.fileName = "sub/c|22q|22.vmdk"',
          'ide0:0.fileName = "old.vmdk"',
          'ide0:0.fileName = "new.vmdk"',
          'ethernet0.fileName = "not a disk"',
          '',
        ].join('\n'),
      ),
    );
    expect(vmxDisks(vmx, '/vms/x/x.vmx')).toEqual([
      { device: 'scsi0:0', fileName: 'a.vmdk', path: '/vms/x/a.vmdk' },
      { device: 'NVME0:0', fileName: '/abs/b.vmdk', path: '/abs/b.vmdk' },
      { device: 'sata0:0', fileName: 'sub/c"q".vmdk', path: '/vms/x/sub/c"q".vmdk' },
      { device: 'ide0:0', fileName: 'new.vmdk', path: '/vms/x/new.vmdk' },
    ]);
  });
});

describe('diskState', () => {
  it('tells plain, vmseal, VMware-encrypted, missing and unreadable disks apart without keys', async () => {
    const state = async (name: string) => diskState(join(tmp.dir, name));
    expect(await state('plain.vmdk')).toEqual({ state: 'plain' });
    expect(await state('flat.vmdk')).toEqual({ state: 'plain' });
    expect(await state('raw.img')).toEqual({ state: 'plain' });
    expect(await state('enc.vmdk')).toEqual({ state: 'vmseal' });
    expect(await state('vmware.vmdk')).toEqual({ state: 'vmware' });
    expect(await state('nothing.vmdk')).toEqual({ state: 'missing' });
    execFileSync('mkfifo', [join(tmp.dir, 'fifo.vmdk')]);
    expect(await state('fifo.vmdk')).toEqual({ state: 'unreadable', detail: `${join(tmp.dir, 'fifo.vmdk')} is not a regular file` });
    const damaged = await state('damaged.vmdk');
    expect(damaged.state).toBe('unreadable');
    expect(damaged.detail).toContain('encryption.format version 9 is not supported');
  });
});

describe('inspectVm', () => {
  it('reports the config state, the lockers, each disk, and a mixed VM; an encrypted .vmx lists its disks only with a key', async () => {
    const folder = join(tmp.dir, 'vm');
    mkdirSync(folder);
    const plain = Buffer.from(
      '.encoding = "UTF-8"\ndisplayName = "mixed"\nscsi0:0.fileName = "../plain.vmdk"\nscsi0:1.fileName = "../enc.vmdk"\nnvme0:0.fileName = "../vmware.vmdk"\n',
    );
    writeFileSync(join(folder, 'mixed.vmx'), plain);
    const info = await inspectVm(folder);
    expect(info).toMatchObject({ vmx: join(folder, 'mixed.vmx'), configEncrypted: false, lockers: [], encryptedDisks: 2, mixed: true, holdsDiskKey: false });
    expect(info.disks!.map((d) => [d.device, d.state])).toEqual([
      ['scsi0:0', 'plain'],
      ['scsi0:1', 'vmseal'],
      ['nvme0:0', 'vmware'],
    ]);
    writeFileSync(
      join(folder, 'mixed.vmx'),
      await encryptVmx(plain, { lockers: [{ kind: 'passphrase', passphrase: 'pw', kdf: 'workstation', rounds: 1000 }] }),
    );
    const locked = await inspectVm(folder);
    expect(locked).toMatchObject({ configEncrypted: true, disks: null, lockers: [expect.objectContaining({ kind: 'passphrase' })] });
    writeFileSync(
      join(folder, 'mixed.vmx'),
      await encryptVmx(Buffer.concat([plain, Buffer.from('dataFileKey = "type=key:cipher=AES-256:key=AAAA"\n')]), {
        lockers: [{ kind: 'passphrase', passphrase: 'pw', kdf: 'workstation', rounds: 1000 }],
      }),
    );
    const opened = await inspectVm(join(folder, 'mixed.vmx'), { keys: { passphrase: 'pw' } });
    expect(opened.holdsDiskKey).toBe(true);
    expect(opened.disks!.map((d) => d.state)).toEqual(['plain', 'vmseal', 'vmware']);
    await expect(inspectVm(folder, { keys: { passphrase: 'wrong' } })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
  });

  it('refuses a folder without a .vmx or with several, naming them', async () => {
    const none = join(tmp.dir, 'empty');
    mkdirSync(none);
    await expect(inspectVm(none)).rejects.toMatchObject({ code: 'ERR_VMX_NOT_FOUND', message: `the folder ${none} holds no .vmx file` });
    writeFileSync(join(none, 'a.vmx'), '');
    writeFileSync(join(none, 'B.VMX'), '');
    await expect(inspectVm(none)).rejects.toMatchObject({
      code: 'ERR_VMX_NOT_FOUND',
      message: `the folder ${none} holds 2 .vmx files (B.VMX, a.vmx); name the one to use`,
    });
    await expect(inspectVm(join(tmp.dir, 'nope'))).rejects.toMatchObject({ code: 'ERR_VMX_NOT_FOUND' });
    execFileSync('mkfifo', [join(tmp.dir, 'fifo.vmx')]);
    await expect(inspectVm(join(tmp.dir, 'fifo.vmx'))).rejects.toMatchObject({
      code: 'ERR_VMX_FORMAT',
      message: `${join(tmp.dir, 'fifo.vmx')} is not a regular file`,
    });
  });
});
