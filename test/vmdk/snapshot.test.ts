// Writing snapshot chains: vmseal makes children, writes them copy-on-write, reverts them; qemu-img
// and qemu-io see the same chain and the same content.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ChainDisk, createDisk, createSnapshot, openDisk, revertSnapshot, VmdkFormatError } from '../../src/vmdk/index.js';
import { MiB, run, tempDir, tryRun } from './helpers.js';

let dir: string;
let cleanup: () => void;
beforeEach(() => ({ dir, cleanup } = tempDir()));
afterEach(() => cleanup());

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function qemuFlat(top: string): Buffer {
  const out = join(dir, `flat-${Math.random().toString(36).slice(2)}.raw`);
  run('qemu-img', ['convert', '-O', 'raw', top, out]);
  return readFileSync(out);
}

function cidOf(path: string): string {
  return /\nCID=([0-9a-f]+)/.exec(
    readFileSync(path)
      .subarray(0, 64 * 1024)
      .toString('latin1'),
  )![1];
}

async function vmsealFlat(path: string): Promise<Buffer> {
  const d = await openDisk(path, { readOnly: true });
  try {
    return await d.read(0, d.capacity);
  } finally {
    await d.close();
  }
}

/** A qemu-made base of 4 MiB: 0x11 everywhere but the last MiB. */
function qemuBase(): string {
  const base = join(dir, 'disk.vmdk');
  run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
  run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 3M', base]);
  return base;
}

describe('snapshots vmseal makes', () => {
  it('creates <base>-00000N children, makes the parent read-only, and writes copy-on-write; qemu agrees', async () => {
    const base = qemuBase();
    const baseCid = cidOf(base);
    const child = await createSnapshot(base);
    expect(child).toBe(join(dir, 'disk-000001.vmdk'));
    expect(statSync(base).mode & 0o222).toBe(0);
    expect(readFileSync(child).subarray(0, 4096).toString('latin1')).toContain(`parentCID=${baseCid}`);

    const model = await vmsealFlat(base);
    const d = await openDisk(child);
    expect(d).toBeInstanceOf(ChainDisk);
    const cidBefore = cidOf(child);
    // Partial grains over the parent's data and over its holes, and a run across grains.
    const writes: Array<[number, Buffer]> = [
      [65536 + 100, Buffer.alloc(10, 0xa1)],
      [3 * MiB + 4096 + 7, Buffer.alloc(300, 0xa2)],
      [2 * MiB - 1000, Buffer.alloc(200_000, 0xa3)],
    ];
    for (const [pos, data] of writes) {
      await d.write(pos, data);
      data.copy(model, pos);
    }
    const cidAfter = cidOf(child);
    expect(cidAfter).not.toBe(cidBefore);
    await d.write(0, Buffer.alloc(512, 0xa4)); // one new CID per opening, not per write
    Buffer.alloc(512, 0xa4).copy(model, 0);
    expect(cidOf(child)).toBe(cidAfter);
    expect(sha(await d.read(0, d.capacity))).toBe(sha(model));
    await d.close();

    expect(cidOf(base)).toBe(baseCid); // the parent was never written
    expect(sha(await vmsealFlat(child))).toBe(sha(model));
    expect(sha(qemuFlat(child))).toBe(sha(model));
    const check = tryRun('qemu-img', ['check', child]);
    expect(check.status, check.stdout + check.stderr).toBe(0);
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', '--backing-chain', child])) as Array<{ filename: string }>;
    expect(info.map((i) => i.filename)).toEqual([child, base]);
    // qemu-io reads vmseal's copy-on-write grain: the parent's bytes around the written ones.
    const r = tryRun('qemu-io', ['-f', 'vmdk', '-r', '-c', 'read -P 0x11 65536 100', '-c', 'read -P 0xa1 65636 10', '-c', 'read -P 0x11 65646 65426', child]);
    expect(r.stdout).not.toContain('Pattern verification failed');
    expect(r.status).toBe(0);
  });

  it('refuses to write a layer that has children; a second snapshot continues the numbering', async () => {
    const base = qemuBase();
    const first = await createSnapshot(base);
    const err = await openDisk(base).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(VmdkFormatError);
    expect((err as VmdkFormatError).code).toBe('ERR_VMDK_READ_ONLY');
    const second = await createSnapshot(first);
    expect(second).toBe(join(dir, 'disk-000002.vmdk'));
    expect(statSync(first).mode & 0o222).toBe(0);
    const d = await openDisk(second);
    await d.write(0, Buffer.alloc(4096, 0x77));
    expect((d as ChainDisk).layers().map((l) => l.path)).toEqual([second, first, base]);
    await d.close();
    const info = JSON.parse(run('qemu-img', ['info', '--output=json', '--backing-chain', second])) as Array<{ filename: string }>;
    expect(info.map((i) => i.filename)).toEqual([second, first, base]);
    expect(sha(qemuFlat(second))).toBe(sha(await vmsealFlat(second)));
  });

  it('a chain of a vmseal-made flat base, with a chosen name', async () => {
    const base = join(dir, 'flat.vmdk');
    const d0 = await createDisk(base, { capacity: 2 * MiB, subformat: 'monolithicFlat' });
    await d0.write(0, Buffer.alloc(2 * MiB, 0x5a));
    await d0.close();
    const child = await createSnapshot(base, { name: 'before-upgrade' });
    expect(child).toBe(join(dir, 'before-upgrade.vmdk'));
    const d = await openDisk(child);
    await d.write(1000 * 512, Buffer.alloc(512, 1));
    await d.close();
    const expected = Buffer.alloc(2 * MiB, 0x5a);
    expected.fill(1, 1000 * 512, 1001 * 512);
    expect(sha(qemuFlat(child))).toBe(sha(expected));
  });

  it('revert discards the changes since the snapshot: a new empty child under the same name', async () => {
    const base = qemuBase();
    const child = await createSnapshot(base);
    const original = await vmsealFlat(base);
    const d = await openDisk(child);
    await d.write(0, Buffer.alloc(MiB, 0xee));
    await d.close();
    expect(await revertSnapshot(child)).toBe(child);
    expect(sha(await vmsealFlat(child))).toBe(sha(original));
    expect(sha(qemuFlat(child))).toBe(sha(original));
    expect(readFileSync(child).subarray(0, 4096).toString('latin1')).toContain('RW 8192 SPARSE "disk-000001.vmdk"');
    expect(tryRun('qemu-img', ['check', child]).status).toBe(0);
    // A base disk has nothing to revert to.
    const plain = join(dir, 'plain.vmdk');
    await (await createDisk(plain, { capacity: MiB })).close();
    await expect(revertSnapshot(plain)).rejects.toMatchObject({ code: 'ERR_VMDK_CHAIN' });
  });
});
