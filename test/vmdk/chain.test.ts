// Snapshot chains (delta disks): read chains qemu-img makes, exactly as qemu-img flattens them.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openDisk, VmdkFormatError, type VirtualDisk } from '../../src/vmdk/index.js';
import { MiB, run, tempDir } from './helpers.js';

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

function qemuIo(path: string, ...cmds: string[]): void {
  run('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), path]);
}

/** base ← mid ← top, each written by qemu-io: partial grains, whole grains, a zero write over data. */
function makeChain(): { base: string; mid: string; top: string } {
  const base = join(dir, 'base.vmdk');
  const mid = join(dir, 'mid.vmdk');
  const top = join(dir, 'top.vmdk');
  run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '8M']);
  qemuIo(base, 'write -P 0x11 0 3M', 'write -P 0x12 5M 100k');
  run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', mid]);
  qemuIo(mid, 'write -P 0x21 512k 4k', 'write -P 0x22 2M 1M', 'write -z 5M 64k');
  run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'mid.vmdk', '-F', 'vmdk', top]);
  qemuIo(top, 'write -P 0x31 1536 3072', 'write -P 0x32 7M 1M', 'write -P 0x33 2166784 512');
  return { base, mid, top };
}

/** Edit the embedded descriptor of a sparse VMDK in place (its area keeps its size). */
function patchEmbeddedDescriptor(path: string, edit: (text: string) => string): void {
  const bytes = readFileSync(path);
  const at = Number(bytes.readBigUInt64LE(28)) * 512;
  const size = Number(bytes.readBigUInt64LE(36)) * 512;
  const area = bytes.subarray(at, at + size);
  const text = edit(area.toString('latin1', 0, area.indexOf(0)));
  area.fill(0);
  area.write(text, 'latin1');
  writeFileSync(path, bytes);
}

async function readAll(d: VirtualDisk): Promise<Buffer> {
  return d.read(0, d.capacity);
}

async function refusal(p: Promise<unknown>): Promise<VmdkFormatError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(VmdkFormatError);
  return err as VmdkFormatError;
}

describe('reading snapshot chains made by qemu-img', () => {
  it('reads a three-layer chain exactly as qemu-img convert flattens it', async () => {
    const { top } = makeChain();
    const expected = qemuFlat(top);
    const d = await openDisk(top, { readOnly: true });
    try {
      expect(d.capacity).toBe(8 * MiB);
      expect(sha(await readAll(d))).toBe(sha(expected));
      // Unaligned reads across layer boundaries.
      for (const [pos, len] of [
        [900, 5000],
        [512 * 1024 - 7, 9000],
        [2 * MiB + 69000, 70000],
        [5 * MiB - 3, 70000],
      ]) {
        expect(sha(await d.read(pos, len))).toBe(sha(expected.subarray(pos, pos + len)));
      }
    } finally {
      await d.close();
    }
  });

  it('reports the union of the layers allocations; bytes outside it are zero', async () => {
    const { top } = makeChain();
    const expected = qemuFlat(top);
    const d = await openDisk(top, { readOnly: true });
    const ranges: Array<{ offset: number; length: number }> = [];
    for await (const r of d.allocatedRanges()) ranges.push(r);
    await d.close();
    let prev = 0;
    for (const r of ranges) {
      expect(r.offset).toBeGreaterThan(prev === 0 ? -1 : prev);
      expect(expected.subarray(prev, r.offset).every((b) => b === 0)).toBe(true);
      prev = r.offset + r.length;
    }
    expect(expected.subarray(prev).every((b) => b === 0)).toBe(true);
    // The base's 3 MiB and the top's last MiB are in it.
    expect(ranges[0].offset).toBe(0);
    expect(ranges.some((r) => r.offset <= 7 * MiB && r.offset + r.length >= 8 * MiB)).toBe(true);
  });

  it('lists every layer file, and an absolute parentFileNameHint is followed', async () => {
    const base = join(dir, 'base.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '1M']);
    qemuIo(base, 'write -P 0x44 0 1M');
    const top = join(dir, 'abs.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', base, '-F', 'vmdk', top]);
    const d = await openDisk(top, { readOnly: true });
    try {
      expect(d.files()).toEqual([top, base]);
      expect((await d.read(0, 16)).every((b) => b === 0x44)).toBe(true);
    } finally {
      await d.close();
    }
  });

  it('refuses a chain whose parent was written after the child was made, naming both CIDs and files', async () => {
    const { mid, top } = makeChain();
    const midCid = /CID=([0-9a-f]+)/.exec(readFileSync(mid).toString('latin1'))![1];
    qemuIo(mid, 'write -P 0x55 0 4k'); // qemu draws a new CID for mid
    const err = await refusal(openDisk(top, { readOnly: true }));
    expect(err.code).toBe('ERR_VMDK_PARENT_CHANGED');
    expect(err.message).toContain(midCid);
    expect(err.message).toContain(mid);
    expect(err.message).toContain(top);
    const newCid = /\nCID=([0-9a-f]+)/.exec(readFileSync(mid).toString('latin1'))![1];
    expect(err.message).toContain(newCid);
  });

  it('refuses a missing parent with its path', async () => {
    const { base, top } = makeChain();
    renameSync(base, join(dir, 'moved.vmdk'));
    const err = await refusal(openDisk(top, { readOnly: true }));
    expect(err.code).toBe('ERR_VMDK_CHAIN');
    expect(err.message).toContain(base);
  });

  it('refuses a loop of layers and half parent links', async () => {
    const a = join(dir, 'a.vmdk');
    const b = join(dir, 'b.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', a, '1M']);
    run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'a.vmdk', '-F', 'vmdk', b]);
    // a now says its parent is b, with b's CID: b → a → b.
    const bCid = /\nCID=([0-9a-f]+)/.exec(readFileSync(b).toString('latin1'))![1];
    patchEmbeddedDescriptor(a, (t) =>
      t
        .replace('parentCID=ffffffff', `parentCID=${bCid}`)
        .replace('createType="monolithicSparse"', 'createType="monolithicSparse"\nparentFileNameHint="b.vmdk"'),
    );
    const loop = await refusal(openDisk(b, { readOnly: true }));
    expect(loop.code).toBe('ERR_VMDK_CHAIN');
    expect(loop.message).toContain('loops');
    // parentCID without a hint.
    const half = join(dir, 'half.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', half, '1M']);
    patchEmbeddedDescriptor(half, (t) => t.replace('parentCID=ffffffff', 'parentCID=12345678'));
    const err = await refusal(openDisk(half, { readOnly: true }));
    expect(err.code).toBe('ERR_VMDK_CHAIN');
    expect(err.message).toContain('parentFileNameHint');
  });
});
