// Encrypted snapshot chains: every layer under one DEK, layer ids bound by each child's authenticator.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedDisk, createEncryptedSnapshot, openDisk, readEncryptionParams, revertEncryptedSnapshot, EncryptedDisk } from '../../src/disk/index.js';
import { createSnapshot, openDisk as openPlain } from '../../src/vmdk/index.js';
import { patternBytes, phraseLocker, sha256, tempDir } from './helpers.js';

const MiB = 1 << 20;
const keys = { passphrase: 'pw' };
let dir: string;
let cleanup: () => void;
beforeEach(() => ({ dir, cleanup } = tempDir('vmseal-chain-')));
afterEach(() => cleanup());

async function readPlain(path: string): Promise<Buffer> {
  const d = await openDisk(path, { keys, readOnly: true });
  try {
    return await d.read(0, d.capacity);
  } finally {
    await d.close();
  }
}

async function writeAt(path: string, pos: number, data: Buffer): Promise<void> {
  const d = await openDisk(path, { keys });
  try {
    await d.write(pos, data);
  } finally {
    await d.close();
  }
}

function cidOf(path: string): string {
  return /\nCID=([0-9a-f]+)/.exec(
    readFileSync(path)
      .subarray(0, 64 * 1024)
      .toString('latin1'),
  )![1];
}

/** Replace the CID in a monolithicSparse file's embedded descriptor (same length). */
function setCid(path: string, cid: string): void {
  const bytes = readFileSync(path);
  const text = bytes.subarray(0, 64 * 1024).toString('latin1');
  const at = text.indexOf(`\nCID=${cidOf(path)}\n`) + 5;
  bytes.write(cid, at, 'latin1');
  writeFileSync(path, bytes);
}

async function encryptedBase(): Promise<{ base: string; data: Buffer }> {
  const base = join(dir, 'vm.vmdk');
  const d = await createEncryptedDisk(base, { capacity: 2 * MiB, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
  const data = patternBytes(2 * MiB, 3);
  await d.write(0, data);
  await d.close();
  return { base, data };
}

describe('encrypted snapshot chains', () => {
  it('a child shares the DEK, cipher, unit size and disk id; reads fall through and writes stay in the child', async () => {
    const { base, data } = await encryptedBase();
    const child = await createEncryptedSnapshot(base, { keys });
    expect(child).toBe(join(dir, 'vm-000001.vmdk'));
    const bp = (await readEncryptionParams(base))!;
    const cp = (await readEncryptionParams(child))!;
    expect(bp.formatVersion).toBe(3);
    expect(cp.formatVersion).toBe(3);
    expect(cp.keySafe).toBe(bp.keySafe);
    expect([cp.cipher, cp.unitSize, cp.diskId]).toEqual([bp.cipher, bp.unitSize, bp.diskId]);
    expect(cp.parentLayerId).toBe(bp.layerId);
    expect(cp.layerId).not.toBe(bp.layerId);
    expect(sha256(await readPlain(child))).toBe(sha256(data));

    const model = Buffer.from(data);
    const w = patternBytes(70_000, 9);
    await writeAt(child, 100_000, w); // partial grains: copy-on-write of ciphertext
    w.copy(model, 100_000);
    await writeAt(child, 0, Buffer.alloc(512, 1)); // unit 0: the child's own data check
    model.fill(1, 0, 512);
    expect(sha256(await readPlain(child))).toBe(sha256(model));
    expect(sha256(await readPlain(base))).toBe(sha256(data));

    // The ciphertext view is what qemu-img flattens from the chain.
    const flat = join(dir, 'flat.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', child, flat]);
    const plain = await openPlain(child, { readOnly: true, allowEncrypted: true });
    expect(sha256(readFileSync(flat))).toBe(sha256(await plain.read(0, plain.capacity)));
    await plain.close();
    expect(execFileSync('qemu-img', ['check', child], { encoding: 'utf8' })).toContain('No errors');
  });

  it('refuses another layer slipped under a child, even with the CID its child expects', async () => {
    const { base } = await encryptedBase();
    const s1 = await createEncryptedSnapshot(base, { keys, name: 's1' });
    await writeAt(s1, 4096, Buffer.alloc(4096, 7));
    const stash = join(dir, 'stash.vmdk');
    copyFileSync(s1, stash);
    // s1 reverted (a new layer, new layer id), then s2 made on it.
    await revertEncryptedSnapshot(s1, { keys });
    const s2 = await createEncryptedSnapshot(s1, { keys, name: 's2' });
    expect(await readPlain(s2)).toBeDefined();
    // Put the old s1 back, with the CID s2 was made on: the VMDK checks pass, the layer ids do not.
    const cid = cidOf(s1);
    copyFileSync(stash, s1);
    setCid(s1, cid);
    await expect(openPlain(s2, { readOnly: true, allowEncrypted: true }).then((d) => d.close())).resolves.toBeUndefined();
    await expect(openDisk(s2, { keys, readOnly: true })).rejects.toMatchObject({ code: 'ERR_WRONG_PARENT' });
  });

  it('refuses a plain child on an encrypted parent and the reverse', async () => {
    const { base } = await encryptedBase();
    await expect(createSnapshot(base)).rejects.toMatchObject({ code: 'ERR_VMDK_CHAIN' });
    const plainChild = join(dir, 'qemu-child.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'vm.vmdk', '-F', 'vmdk', plainChild]);
    await expect(openDisk(plainChild, { readOnly: true })).rejects.toMatchObject({ code: 'ERR_VMDK_CHAIN' });
    // An encrypted child's lines on a plain parent.
    const plainBase = join(dir, 'plain.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', plainBase, '2M']);
    const lines = Object.entries({ 'encryption.format': 'vmseal/3' }) as Array<[string, string]>;
    await expect(createSnapshot(plainBase, { descriptorLines: lines })).rejects.toMatchObject({ code: 'ERR_VMDK_CHAIN' });
    const reopened = await openDisk(join(dir, 'vm.vmdk'), { keys, readOnly: true });
    expect(reopened).toBeInstanceOf(EncryptedDisk);
    await reopened.close();
  });
});
