// vm encrypt / vm decrypt of snapshot chains whose layers are not single files (issue 12): qemu-img
// makes the chains — a twoGbMaxExtentSparse base with a twoGbMaxExtentSparse child (VMware
// Workstation's "split into 2 GB files"), a monolithicFlat base with a sparse child, a
// twoGbMaxExtentFlat base with a split child. The base keeps its subformat, a child becomes
// monolithicSparse (the one subformat the snapshot writer makes), the old extent files that nothing
// replaced are gone, and the data — read by qemu-img, not by vmseal, before and after — is intact.
// A layer in a subformat the job cannot rewrite (streamOptimized) is refused before anything changes.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDisk } from '../../src/disk/index.js';
import { LocalKeyProvider } from '../../src/keys/index.js';
import { decryptVmFolder, encryptVmFolder, listVmFolder, VM_JOB_NAME } from '../../src/vm/index.js';
import { openDisk as openVmdk } from '../../src/vmdk/index.js';
import { tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
let provider: LocalKeyProvider;
let n = 0;
const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

beforeAll(() => {
  tmp = tempDir('vmseal-vm-chain-sub-');
  provider = new LocalKeyProvider({ home: join(tmp.dir, 'home') });
});
afterAll(() => tmp.cleanup());

/** The guest-visible content of a plain chain, read by qemu-img (independent of vmseal). */
function qemuContent(top: string): string {
  const out = join(tmp.dir, `content${n++}.raw`);
  execFileSync('qemu-img', ['convert', '-q', '-f', 'vmdk', '-O', 'raw', top, out]);
  return sha256(readFileSync(out));
}

async function vmsealContent(top: string): Promise<string> {
  const d = await openDisk(top, { keys: { providers: [provider] }, readOnly: true });
  try {
    return sha256(Buffer.from(await d.read(0, d.capacity)));
  } finally {
    await d.close();
  }
}

async function subformatOf(path: string): Promise<string> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true });
  try {
    return d.subformat;
  } finally {
    await d.close();
  }
}

/** A qemu VM folder whose one disk is base.vmdk ← base-000001.vmdk, each layer holding data of its own. */
function chainFolder(base: string, child: string): { vm: string; top: string } {
  const vm = join(tmp.dir, `vm${n++}`);
  mkdirSync(vm);
  const qemuIo = (file: string, cmd: string) => execFileSync('qemu-io', ['-f', 'vmdk', '-c', cmd, file], { stdio: 'ignore' });
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${base}`, join(vm, 'base.vmdk'), '8M']);
  qemuIo(join(vm, 'base.vmdk'), 'write -P 0x11 0 3M');
  qemuIo(join(vm, 'base.vmdk'), 'write -P 0x22 7M 64k');
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${child}`, '-b', 'base.vmdk', '-F', 'vmdk', join(vm, 'base-000001.vmdk')]);
  qemuIo(join(vm, 'base-000001.vmdk'), 'write -P 0x33 1M 512k');
  qemuIo(join(vm, 'base-000001.vmdk'), 'write -P 0x44 5M 4k');
  writeFileSync(join(vm, 'vmseal-vm.json'), JSON.stringify({ format: 'vmseal-vm', version: 1, disks: [{ file: 'base-000001.vmdk' }] }));
  return { vm, top: join(vm, 'base-000001.vmdk') };
}

const CASES = [
  { base: 'twoGbMaxExtentSparse', child: 'twoGbMaxExtentSparse' },
  { base: 'monolithicFlat', child: 'monolithicSparse' },
  { base: 'twoGbMaxExtentFlat', child: 'twoGbMaxExtentSparse' },
];

describe('a snapshot chain with multi-file layers', () => {
  it.each(CASES)('base $base, child $child: encrypted and decrypted; the base keeps its subformat, the child is monolithicSparse', async ({ base, child }) => {
    const { vm, top } = chainFolder(base, child);
    const before = qemuContent(top);
    expect((await listVmFolder(vm)).disks[0]!.files.length).toBeGreaterThan(2);

    await encryptVmFolder(vm, { provider });
    const list = await listVmFolder(vm);
    expect(list.disks[0]!.state).toBe('vmseal');
    expect(list.disks[0]!.layers).toEqual([top, join(vm, 'base.vmdk')]);
    expect(await vmsealContent(top)).toBe(before);
    expect(await subformatOf(join(vm, 'base.vmdk'))).toBe(base);
    expect(await subformatOf(top)).toBe('monolithicSparse');
    // Exactly the new chain's files (and the manifest) are left: no old extent, no staging folder, no job.
    const names = (): string[] =>
      readdirSync(vm)
        .filter((f) => !f.endsWith('.vmseal-lock') && f !== 'vmseal-vm.json')
        .sort();
    expect(names()).toEqual(list.disks[0]!.files.map((f) => f.slice(vm.length + 1)).sort());
    expect(names()).not.toContain(VM_JOB_NAME);

    await decryptVmFolder(vm, { keys: { providers: [provider] } });
    expect(qemuContent(top)).toBe(before);
    expect(await subformatOf(join(vm, 'base.vmdk'))).toBe(base);
    expect(execFileSync('qemu-img', ['check', top], { encoding: 'utf8' })).toMatch(/No errors/);
    expect(names()).toEqual((await listVmFolder(vm)).disks[0]!.files.map((f) => f.slice(vm.length + 1)).sort());
  });

  it('a layer in a subformat the job cannot rewrite (streamOptimized) is refused before anything changes: ERR_VM_SNAPSHOT naming it', async () => {
    const { vm, top } = chainFolder('streamOptimized', 'monolithicSparse');
    const before = readdirSync(vm).sort();
    await expect(encryptVmFolder(vm, { provider })).rejects.toMatchObject({
      code: 'ERR_VM_SNAPSHOT',
      message: expect.stringContaining(`${join(vm, 'base.vmdk')} is streamOptimized`),
    });
    expect(readdirSync(vm).sort()).toEqual(before);
    expect((await listVmFolder(vm)).disks[0]!.state).toBe('plain');
    expect(qemuContent(top)).toMatch(/^[0-9a-f]{64}$/);
  });
});
