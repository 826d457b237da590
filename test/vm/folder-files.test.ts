// listVmFolder: the files of a VM folder (disks with their snapshot chains, state files, the .vmsd),
// on a folder made with qemu-img, and a qemu folder described by vmseal-vm.json.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listVmFolder } from '../../src/vm/index.js';
import { qemuImg } from '../cli/run-cli.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-vm-files-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('listVmFolder', () => {
  it('lists each disk with its snapshot chain, the .nvram, snapshot state files and the .vmsd', async () => {
    const vm = join(dir, 'vmx');
    await mkdir(vm);
    await qemuImg(['create', '-q', '-f', 'vmdk', join(vm, 'base.vmdk'), '4M']);
    await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', join(vm, 'base-000001.vmdk')]);
    await qemuImg(['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicFlat', join(vm, 'data.vmdk'), '2M']);
    await writeFile(join(vm, 'web.vmx'), 'scsi0:0.fileName = "base-000001.vmdk"\nscsi0:1.fileName = "data.vmdk"\nsata0:0.fileName = "gone.vmdk"\n');
    await writeFile(join(vm, 'web.nvram'), 'nvram');
    await writeFile(join(vm, 'web-Snapshot1.vmsn'), 'vmsn');
    await writeFile(join(vm, 'web.vmsd'), '.encoding = "UTF-8"\n');
    const list = await listVmFolder(vm);
    expect(list.kind).toBe('vmx');
    expect(list.config).toBe(join(vm, 'web.vmx'));
    expect(list.snapshotDb).toBe(join(vm, 'web.vmsd'));
    expect(list.disks.map((d) => [d.device, d.state, d.layers])).toEqual([
      ['scsi0:0', 'plain', [join(vm, 'base-000001.vmdk'), join(vm, 'base.vmdk')]],
      ['scsi0:1', 'plain', [join(vm, 'data.vmdk')]],
      ['sata0:0', 'missing', [join(vm, 'gone.vmdk')]],
    ]);
    expect(list.disks[1]!.files).toEqual([join(vm, 'data.vmdk'), join(vm, 'data-flat.vmdk')]);
    expect(list.stateFiles).toEqual([
      { path: join(vm, 'web.nvram'), kind: 'nvram', encrypted: false },
      { path: join(vm, 'web-Snapshot1.vmsn'), kind: 'vmsn', encrypted: false },
    ]);
  });

  it('lists a qemu folder from vmseal-vm.json (disks and UEFI variables)', async () => {
    const vm = join(dir, 'qemu');
    await mkdir(vm);
    await qemuImg(['create', '-q', '-f', 'vmdk', join(vm, 'd0.vmdk'), '1M']);
    await writeFile(join(vm, 'VARS.fd'), Buffer.alloc(4096));
    await writeFile(
      join(vm, 'vmseal-vm.json'),
      JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'd0.vmdk' }], uefiVars: { file: 'VARS.fd' } }),
    );
    const list = await listVmFolder(vm);
    expect(list.kind).toBe('qemu');
    expect(list.disks.map((d) => [d.device, d.path, d.state])).toEqual([['disks[0]', join(vm, 'd0.vmdk'), 'plain']]);
    expect(list.stateFiles).toEqual([{ path: join(vm, 'VARS.fd'), kind: 'uefi-vars', encrypted: false }]);
  });
});
