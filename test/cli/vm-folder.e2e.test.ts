// `vmseal vm encrypt DIR` / `vm decrypt DIR` without --config-only: a VM folder made with qemu-img
// (a sparse disk of ext4 data, a flat disk, an .nvram, a snapshot state file, a .vmx naming the
// disks) goes through vm encrypt, vm info and vm decrypt as one unit, checked by hashes of the disk
// contents (qemu-img convert -O raw, independent of vmseal) and of the plain files; a mixed VM is
// completed and reversed; a snapshot chain goes through as one disk; vm tpm refuses a mixed VM. (A killed vm
// encrypt: vm-folder-kill.e2e.test.ts.)
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readEncryptionParams } from '../../src/disk/index.js';
import { describeKeySafe } from '../../src/keys/index.js';
import { readStateFileHeader, VM_JOB_NAME } from '../../src/vm/index.js';
import { cleanEnv, expectOneLineError, json, qemuContentHash, qemuImg, sha256File, vmseal, type CliResult } from './run-cli.js';

const execFileP = promisify(execFile);
let dir: string;
let template: string;
let env: NodeJS.ProcessEnv;
let n = 0;
/** What the template VM holds in the clear: each disk's content hash, each other file's hash. */
const plain: Record<string, string> = {};
const DISKS = ['disk0.vmdk', 'data.vmdk'];
const FILES = ['web.vmx', 'web.nvram', 'web-Snapshot1.vmsn'];
const VMX = [
  '.encoding = "UTF-8"',
  'displayName = "web"',
  'scsi0:0.fileName = "disk0.vmdk"',
  'scsi0:0.present = "TRUE"',
  'nvme0:0.fileName = "data.vmdk"',
  '',
].join('\n');

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A fresh copy of the template VM folder. */
async function freshVm(): Promise<string> {
  const vm = join(dir, `vm${n++}`);
  await cp(template, vm, { recursive: true });
  return vm;
}

async function contentHash(path: string): Promise<string> {
  return qemuContentHash(path, join(dir, `scratch-${n++}.raw`));
}

/** The VM's files are back to the template's plaintext, byte for byte (disks by content). */
async function expectPlain(vm: string): Promise<void> {
  for (const d of DISKS) expect(await contentHash(join(vm, d)), d).toBe(plain[d]);
  for (const f of FILES) expect(await sha256File(join(vm, f)), f).toBe(plain[f]);
  expect(existsSync(join(vm, VM_JOB_NAME))).toBe(false);
}

/** The key ids of the provider lockers of a vmseal disk. */
async function diskKeks(path: string): Promise<string[]> {
  const p = await readEncryptionParams(path);
  return describeKeySafe(p!.keySafe).map((l) => l.keyId ?? l.kind);
}

beforeAll(async () => {
  if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
    throw new Error('dist/cli/main.js is missing: these tests run the built CLI; run `npm run build` first');
  }
  dir = await mkdtemp(join(tmpdir(), 'vmseal-vm-folder-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
  template = join(dir, 'template');
  await mkdir(template);
  // disk0: an ext4 file system with a file in it (mkfs on a raw image, then qemu-img convert to a sparse VMDK).
  const raw = join(dir, 'fs.raw');
  await qemuImg(['create', '-q', '-f', 'raw', raw, '8M']);
  await execFileP('mkfs.ext4', [
    '-q',
    '-F',
    '-d',
    await (async () => {
      const content = join(dir, 'content');
      await mkdir(content);
      await writeFile(join(content, 'hello.txt'), 'hello from the guest\n'.repeat(1000));
      await writeFile(join(content, 'random.bin'), randomBytes(2 << 20));
      return content;
    })(),
    raw,
  ]);
  await qemuImg(['convert', '-O', 'vmdk', raw, join(template, 'disk0.vmdk')]);
  // data: a flat disk (descriptor + extent) with random data at its start.
  const dataRaw = join(dir, 'data.raw');
  await writeFile(dataRaw, Buffer.concat([randomBytes(1 << 20), Buffer.alloc(3 << 20)]));
  await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', dataRaw, join(template, 'data.vmdk')]);
  await writeFile(join(template, 'web.vmx'), VMX);
  await writeFile(join(template, 'web.nvram'), randomBytes(262_144));
  await writeFile(join(template, 'web-Snapshot1.vmsn'), randomBytes(1_500_000));
  for (const d of DISKS) plain[d] = await contentHash(join(template, d));
  for (const f of FILES) plain[f] = await sha256File(join(template, f));
}, 60_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('vm encrypt DIR / vm info / vm decrypt DIR', () => {
  it('encrypts every disk, state file and the .vmx under one KEK of the VM, and decrypts them back byte for byte', async () => {
    const vm = await freshVm();
    const enc = json(ok(await vmseal(['vm', 'encrypt', vm, '--json'], env)));
    expect(enc.steps.map((s: { kind: string }) => s.kind)).toEqual(['disk', 'disk', 'state', 'state', 'config']);
    const kek: string = enc.kek.keyId;
    // Every key of the VM is locked by the one KEK: the disks' DEKs, the state files' keys, the config key.
    for (const d of DISKS) expect(await diskKeks(join(vm, d))).toEqual([kek]);
    for (const f of ['web.nvram', 'web-Snapshot1.vmsn']) {
      const h = await readStateFileHeader(join(vm, f));
      expect(describeKeySafe(h.keySafe).map((l) => l.keyId)).toEqual([kek]);
    }
    // The guest data is not in the clear any more.
    expect(await contentHash(join(vm, 'disk0.vmdk'))).not.toBe(plain['disk0.vmdk']);
    expect((await readFile(join(vm, 'disk0.vmdk'))).includes('hello from the guest')).toBe(false);
    const info = json(ok(await vmseal(['vm', 'info', vm, '--json'], env)));
    expect(info).toMatchObject({ configEncrypted: true, encryptedDisks: 2, mixed: false });
    expect(info.lockers.map((l: { keyId: string }) => l.keyId)).toEqual([kek]);
    expect(info.job).toBeUndefined();
    const text = ok(await vmseal(['vm', 'info', vm], env)).stdout;
    expect(text).toContain('VM configuration files are encrypted.');
    expect(text).toContain('Encrypted hard disks: scsi0:0, nvme0:0 (2 of 2).');
    // Export: a streamOptimized copy (what OVF/OVA holds) of an encrypted VM's disk is refused, as vSphere
    // refuses an OVF export of an encrypted VM, unless it is decrypted.
    const so = join(vm, 'export.vmdk');
    const ovf = await vmseal(['convert', join(vm, 'disk0.vmdk'), so, '--subformat', 'streamOptimized'], env);
    expect(ovf.code).toBe(2);
    expect(expectOneLineError(ovf)).toContain('vSphere refuses to export an encrypted VM to OVF');
    ok(await vmseal(['convert', join(vm, 'disk0.vmdk'), so, '--subformat', 'streamOptimized', '--decrypt'], env));
    expect(await contentHash(so)).toBe(plain['disk0.vmdk']);
    await rm(so);
    // Nothing left to do: refused, not redone.
    const again = await vmseal(['vm', 'encrypt', vm], env);
    expect(again.code).toBe(5);
    expect(expectOneLineError(again)).toContain('already encrypted');

    const dec = json(ok(await vmseal(['vm', 'decrypt', vm, '--json'], env)));
    expect(dec.steps.map((s: { kind: string }) => s.kind)).toEqual(['disk', 'disk', 'state', 'state', 'config']);
    await expectPlain(vm);
  }, 60_000);

  it('completes a mixed VM (only its plain disks, under the KEK the VM already uses) and reverses it', async () => {
    const vm = await freshVm();
    ok(await vmseal(['encrypt', join(vm, 'data.vmdk'), '--in-place'], env));
    const before = await readEncryptionParams(join(vm, 'data.vmdk'));
    const info = json(ok(await vmseal(['vm', 'info', vm, '--json'], env)));
    expect(info).toMatchObject({ configEncrypted: false, encryptedDisks: 1, mixed: true });
    const enc = json(ok(await vmseal(['vm', 'encrypt', vm, '--json'], env)));
    expect(enc.steps.map((s: { kind: string; path: string }) => [s.kind, s.path.split('/').pop()])).toEqual([
      ['disk', 'disk0.vmdk'],
      ['state', 'web.nvram'],
      ['state', 'web-Snapshot1.vmsn'],
      ['config', 'web.vmx'],
    ]);
    // The disk that was encrypted already is untouched; the rest is under its KEK (the VM's).
    expect((await readEncryptionParams(join(vm, 'data.vmdk')))!.keySafe).toBe(before!.keySafe);
    expect(enc.kek.keyId).toBe((await diskKeks(join(vm, 'data.vmdk')))[0]);
    expect(await diskKeks(join(vm, 'disk0.vmdk'))).toEqual([enc.kek.keyId]);
    ok(await vmseal(['vm', 'decrypt', vm], env));
    await expectPlain(vm);

    // A mixed VM is reversed by vm decrypt too (its plain disk stays as it is).
    ok(await vmseal(['encrypt', join(vm, 'disk0.vmdk'), '--in-place'], env));
    ok(await vmseal(['vm', 'decrypt', vm], env));
    await expectPlain(vm);
  }, 60_000);

  it('encrypts a snapshot chain as one disk (every layer under one DEK, layer ids) and decrypts it back; a chain over a flat base too', async () => {
    const vm = await freshVm();
    // disk0.vmdk <- disk0-000001.vmdk, the child holding data of its own over part of the parent's.
    const child = join(vm, 'disk0-000001.vmdk');
    await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'disk0.vmdk', '-F', 'vmdk', child]);
    await execFileP('qemu-io', ['-c', 'write -P 0x5a 1M 256k', '-c', 'write -P 0xa5 0 4k', child]);
    await writeFile(join(vm, 'web.vmx'), VMX.replace('"disk0.vmdk"', '"disk0-000001.vmdk"'));
    const chainPlain = await contentHash(child);
    const vmxPlain = await sha256File(join(vm, 'web.vmx'));
    const enc = json(ok(await vmseal(['vm', 'encrypt', vm, '--json'], env)));
    const layers = await Promise.all([child, join(vm, 'disk0.vmdk')].map(async (f) => (await readEncryptionParams(f))!));
    // One DEK for the chain: the same KeySafe, disk id and cipher in both layers, each its own layer id, the
    // child naming its parent's; the KeySafe under the VM's KEK.
    expect(layers[0]!.keySafe).toBe(layers[1]!.keySafe);
    expect(layers[0]!.diskId).toBe(layers[1]!.diskId);
    expect(layers[0]!.parentLayerId).toBe(layers[1]!.layerId);
    expect(layers[0]!.layerId).not.toBe(layers[1]!.layerId);
    expect(await diskKeks(child)).toEqual([enc.kek.keyId]);
    expect(existsSync(join(vm, '.disk0-000001.vmdk.vmseal-chain-encrypt'))).toBe(false);
    const info = json(ok(await vmseal(['vm', 'info', vm, '--json'], env)));
    expect(info).toMatchObject({ configEncrypted: true, encryptedDisks: 2, mixed: false });
    ok(await vmseal(['vm', 'decrypt', vm], env));
    expect(await contentHash(child)).toBe(chainPlain);
    expect(await contentHash(join(vm, 'data.vmdk'))).toBe(plain['data.vmdk']);
    expect(await sha256File(join(vm, 'web.vmx'))).toBe(vmxPlain);
    expect(await readEncryptionParams(join(vm, 'disk0.vmdk'))).toBeNull();

    // A chain whose base has an extent file of its own (monolithicFlat): the base keeps its subformat.
    const flat = await freshVm();
    const flatChild = join(flat, 'data-000001.vmdk');
    await qemuImg(['create', '-q', '-f', 'vmdk', '-b', 'data.vmdk', '-F', 'vmdk', flatChild]);
    await execFileP('qemu-io', ['-c', 'write -P 0x3c 512k 64k', flatChild]);
    await writeFile(join(flat, 'web.vmx'), VMX.replace('"data.vmdk"', '"data-000001.vmdk"'));
    const flatChainPlain = await contentHash(flatChild);
    ok(await vmseal(['vm', 'encrypt', flat], env));
    expect((await readEncryptionParams(join(flat, 'data.vmdk')))!.diskId).toBe((await readEncryptionParams(flatChild))!.diskId);
    expect(await readFile(join(flat, 'data.vmdk'), 'latin1')).toContain('createType="monolithicFlat"');
    expect(await contentHash(flatChild)).not.toBe(flatChainPlain);
    ok(await vmseal(['vm', 'decrypt', flat], env));
    expect(await contentHash(flatChild)).toBe(flatChainPlain);
    expect(await sha256File(join(flat, 'web.nvram'))).toBe(plain['web.nvram']);
  }, 60_000);
});

describe('vm tpm', () => {
  it('refuses a mixed VM with ERR_VM_MIXED, listing the disks in each state (vm info reports it)', async () => {
    const vm = join(dir, `qemu${n++}`);
    await mkdir(vm);
    await cp(join(template, 'disk0.vmdk'), join(vm, 'a.vmdk'));
    await cp(join(template, 'disk0.vmdk'), join(vm, 'b.vmdk'));
    await writeFile(
      join(vm, 'vmseal-vm.json'),
      JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'a.vmdk' }, { file: 'b.vmdk' }], tpm: { state: 'tpm' } }),
    );
    ok(await vmseal(['encrypt', join(vm, 'b.vmdk'), '--in-place'], env));
    // vm info reads a qemu folder from its manifest too, and says it is mixed.
    const info = json(ok(await vmseal(['vm', 'info', vm, '--json'], env)));
    expect(info).toMatchObject({ configEncrypted: false, encryptedDisks: 1, mixed: true });
    expect(info.disks.map((d: { device: string; state: string }) => [d.device, d.state])).toEqual([
      ['disks[0]', 'plain'],
      ['disks[1]', 'vmseal'],
    ]);
    const r = await vmseal(['vm', 'tpm', vm], env);
    expect(r.code).toBe(5);
    const line = expectOneLineError(r);
    expect(line).toContain('encrypted disks: disks[1]; plain disks: disks[0]');
    expect(existsSync(join(vm, 'tpm'))).toBe(false);
  }, 60_000);
});
