// The qemu VM folder manifest (vmseal-vm.json): the schema of docs/vm.md is enforced with
// ERR_VM_MANIFEST and a message naming the field, paths stay inside the folder, and writes are atomic.
import { mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readManifest, validateManifest, writeManifest, MANIFEST_NAME } from '../../src/vm/index.js';
import { tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-manifest-');
});
afterAll(() => tmp.cleanup());

const base = { format: 'vmseal-vm', version: 1 };

describe('validateManifest', () => {
  it('accepts the documented example', () => {
    const m = validateManifest(
      { ...base, name: 'web1', disks: [{ file: 'disk0.vmdk' }, { file: 'data/disk1.vmdk' }], uefiVars: { file: 'OVMF_VARS.fd' }, tpm: { state: 'tpm' } },
      'm.json',
    );
    expect(m.disks).toEqual([{ file: 'disk0.vmdk' }, { file: 'data/disk1.vmdk' }]);
    expect(m.tpm).toEqual({ state: 'tpm' });
    expect(validateManifest(base, 'm.json').disks).toEqual([]);
  });

  it.each([
    ['not an object', [], /must be a JSON object/],
    ['another format', { format: 'other', version: 1 }, /"format" must be "vmseal-vm"/],
    ['no version', { format: 'vmseal-vm' }, /"version" must be 1/],
    ['a newer version', { ...base, version: 2 }, /version 2 is newer than this vmseal reads \(1\): use a newer vmseal/],
    ['an unknown field', { ...base, disk: [] }, /the manifest has an unknown field "disk"/],
    ['an unknown disk field', { ...base, disks: [{ file: 'a.vmdk', path: 'x' }] }, /disks\[0\] has an unknown field "path"/],
    ['an absolute path', { ...base, disks: [{ file: '/etc/passwd' }] }, /disks\[0\]\.file must be a path inside the VM folder/],
    ['a path with ..', { ...base, uefiVars: { file: '../vars.fd' } }, /uefiVars\.file must be a path inside the VM folder/],
    ['a disk twice', { ...base, disks: [{ file: 'a.vmdk' }, { file: './a.vmdk' }] }, /disks\[1\]\.file names a disk listed before/],
    ['a bad name', { ...base, name: 'a b' }, /"name" must be 1 to 64/],
    ['a tpm without state', { ...base, tpm: {} }, /tpm\.state must be a relative path, not undefined/],
    ['a keySafe that is no string', { ...base, tpm: { state: 'tpm', keySafe: 5 } }, /tpm\.keySafe must be a KeySafe string/],
    ['too many disks', { ...base, disks: Array.from({ length: 257 }, (_, i) => ({ file: `${i}.vmdk` })) }, /at most 256/],
  ])('refuses %s', (_what, value, message) => {
    expect(() => validateManifest(value, 'm.json')).toThrow(expect.objectContaining({ code: 'ERR_VM_MANIFEST', message: expect.stringMatching(message) }));
  });
});

describe('readManifest / writeManifest', () => {
  it('a missing manifest says what one looks like', async () => {
    const dir = join(tmp.dir, 'none');
    mkdirSync(dir);
    await expect(readManifest(dir)).rejects.toMatchObject({ code: 'ERR_VM_MANIFEST', message: expect.stringContaining('"format": "vmseal-vm"') });
  });

  it('not JSON, or too big, is ERR_VM_MANIFEST', async () => {
    const dir = join(tmp.dir, 'bad');
    mkdirSync(dir);
    writeFileSync(join(dir, MANIFEST_NAME), '{ "format": ');
    await expect(readManifest(dir)).rejects.toMatchObject({ code: 'ERR_VM_MANIFEST', message: expect.stringContaining('is not valid JSON') });
    writeFileSync(join(dir, MANIFEST_NAME), Buffer.alloc(1024 * 1024 + 1, 0x20));
    await expect(readManifest(dir)).rejects.toMatchObject({ code: 'ERR_VM_MANIFEST', message: expect.stringContaining('more than a manifest can be') });
  });

  it('writes atomically with mode 0600 and reads back what it wrote', async () => {
    const dir = join(tmp.dir, 'rw');
    mkdirSync(dir);
    const m = validateManifest({ ...base, disks: [{ file: 'd.vmdk' }], tpm: { state: 'tpm', keySafe: 'vmware:key/rawkey/x' } }, 'm');
    await writeManifest(dir, m);
    expect(statSync(join(dir, MANIFEST_NAME)).mode & 0o777).toBe(0o600);
    expect(await readManifest(dir)).toEqual(m);
    expect(readdirSync(dir)).toEqual([MANIFEST_NAME]);
    await expect(writeManifest(dir, { ...m, version: 0 })).rejects.toMatchObject({ code: 'ERR_VM_MANIFEST' });
  });
});
