// A VM folder encrypted as one unit under a KEK of a real KMIP server (PyKMIP): one KEK for the VM,
// made on the server once, locks every disk's DEK, the .nvram's file key and the config key; the VM
// decrypts back to its original bytes through the server.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readEncryptionParams } from '../../src/disk/index.js';
import { describeKeySafe } from '../../src/keys/index.js';
import type { CreateKeyOptions, KeyRef } from '../../src/keys/index.js';
import { KmipKeyProvider } from '../../src/kmip/index.js';
import { decryptVmFolder, encryptVmFolder, inspectVm, readStateFileHeader, VM_JOB_NAME } from '../../src/vm/index.js';
import { tempDir } from '../disk/helpers.js';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { contentHash, randomRaw, sha256 } from './helpers.js';

let kms: PyKmip;
let tmp: ReturnType<typeof tempDir>;
const providers: KmipKeyProvider[] = [];
function provider(): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('vm-kms'), timeoutMs: 5000 });
  providers.push(p);
  return p;
}

beforeAll(async () => {
  tmp = tempDir('vmseal-vm-kmip-');
  kms = await startPyKmip();
}, 60_000);
afterAll(async () => {
  for (const p of providers) await p.close();
  await kms?.stop();
  tmp.cleanup();
});

describe('vm encrypt DIR with a KMIP provider', () => {
  it('locks every key of the VM with one KEK of the server, and decrypts back through it', async () => {
    const vm = join(tmp.dir, 'vm');
    mkdirSync(vm);
    const raw = randomRaw(join(tmp.dir, 'd.raw'), 200_000);
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', raw, join(vm, 'a.vmdk')]);
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', raw, join(vm, 'b.vmdk')]);
    writeFileSync(join(vm, 'k.vmx'), 'displayName = "k"\nscsi0:0.fileName = "a.vmdk"\nscsi0:1.fileName = "b.vmdk"\n');
    writeFileSync(join(vm, 'k.nvram'), randomBytes(10_000));
    const before = { a: await contentHash(join(vm, 'a.vmdk')), vmx: sha256(readFileSync(join(vm, 'k.vmx'))), nvram: sha256(readFileSync(join(vm, 'k.nvram'))) };

    const r = await encryptVmFolder(vm, { provider: provider() });
    expect(r.kek).toMatchObject({ providerId: 'vm-kms' });
    const kek = r.kek!.keyId;
    for (const d of ['a.vmdk', 'b.vmdk'])
      expect(describeKeySafe((await readEncryptionParams(join(vm, d)))!.keySafe).map((l) => [l.providerId, l.keyId])).toEqual([['vm-kms', kek]]);
    expect(describeKeySafe((await readStateFileHeader(join(vm, 'k.nvram'))).keySafe).map((l) => l.keyId)).toEqual([kek]);
    const info = await inspectVm(vm, { keys: { providers: [provider()] } });
    expect(info).toMatchObject({ configEncrypted: true, encryptedDisks: 2 });
    expect(info.lockers.map((l) => l.keyId)).toEqual([kek]);

    await decryptVmFolder(vm, { keys: { providers: [provider()] } });
    expect(await contentHash(join(vm, 'a.vmdk'))).toBe(before.a);
    expect(sha256(readFileSync(join(vm, 'k.vmx')))).toBe(before.vmx);
    expect(sha256(readFileSync(join(vm, 'k.nvram')))).toBe(before.nvram);
  }, 60_000);

  it('a run killed right after the KMIP Create is finished with that key, found by its Name (Locate): no second KEK', async () => {
    /** Dies after the server made the key, before vm encrypt records its id in the job file. */
    class DiesAfterCreate extends KmipKeyProvider {
      override async createKey(opts?: CreateKeyOptions): Promise<KeyRef> {
        await super.createKey(opts);
        throw new Error('simulated crash after the KMIP Create');
      }
    }
    const vm = join(tmp.dir, 'vm-pending');
    mkdirSync(vm);
    const raw = join(tmp.dir, 'p.raw');
    writeFileSync(raw, randomBytes(1 << 20));
    execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', raw, join(vm, 'a.vmdk')]);
    writeFileSync(join(vm, 'vmseal-vm.json'), JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'a.vmdk' }] }));
    const dying = new DiesAfterCreate({ ...kms.providerOptions('vm-kms'), timeoutMs: 5000 });
    providers.push(dying);
    await expect(encryptVmFolder(vm, { provider: dying })).rejects.toThrow('simulated crash');
    const { name } = (JSON.parse(readFileSync(join(vm, VM_JOB_NAME), 'utf8')) as { kekPending: { name: string } }).kekPending;
    const p = provider();
    const made = await p.locate(name);
    expect(made).toHaveLength(1);

    const r = await encryptVmFolder(vm, { provider: p });
    expect(r.kek).toEqual({ providerId: 'vm-kms', keyId: made[0] });
    expect(await p.locate(name)).toEqual(made);
    expect(describeKeySafe((await readEncryptionParams(join(vm, 'a.vmdk')))!.keySafe).map((l) => l.keyId)).toEqual(made);
  }, 60_000);
});
