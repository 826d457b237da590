// The VMDK layer is the one reader of the sparse header: the pipeline asks it where an embedded
// descriptor lives (embeddedDescriptorArea) instead of decoding header fields itself.
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { locateDescriptor } from '../../src/pipeline/descriptor-io.js';
import { createDisk, VmdkFormatError } from '../../src/vmdk/index.js';
import { embeddedDescriptorArea, isSparseExtent } from '../../src/vmdk/sparse-header.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-descarea-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function head(path: string): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.alloc(512);
    const { bytesRead } = await fh.read(buf, 0, 512, 0);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

async function make(name: string, subformat: 'monolithicSparse' | 'monolithicFlat' | 'twoGbMaxExtentSparse'): Promise<string> {
  const path = join(dir, name);
  const disk = await createDisk(path, { capacity: 4 << 20, subformat });
  await disk.close();
  return path;
}

describe('embeddedDescriptorArea', () => {
  it("finds a monolithicSparse disk's descriptor where qemu-img reads it", async () => {
    const path = await make('sparse.vmdk', 'monolithicSparse');
    const area = embeddedDescriptorArea(await head(path), path);
    expect(area).toBeDefined();
    const bytes = (await readFile(path)).subarray(area!.offset, area!.offset + area!.size);
    expect(bytes.toString('latin1')).toMatch(/^# Disk DescriptorFile\n/);
    expect(execFileSync('qemu-img', ['info', '--output=json', path], { encoding: 'utf8' })).toContain('"create-type": "monolithicSparse"');
    expect(await locateDescriptor(path)).toEqual({ kind: 'embedded', path, ...area });
    expect(isSparseExtent(await head(path))).toBe(true);
  });

  it('says "not embedded" for a text descriptor and for a short file', async () => {
    const path = await make('flat.vmdk', 'monolithicFlat');
    expect(embeddedDescriptorArea(await head(path), path)).toBeUndefined();
    expect(embeddedDescriptorArea(Buffer.from('KDMV'), 'x')).toBeUndefined();
    expect(await locateDescriptor(path)).toEqual({ kind: 'text', path });
    expect(isSparseExtent(await head(path))).toBe(false);
  });

  it('refuses a sparse extent without a descriptor area (a twoGbMaxExtentSparse extent)', async () => {
    await make('split.vmdk', 'twoGbMaxExtentSparse');
    const extent = join(
      dir,
      readdirSync(dir).find((f) => f.startsWith('split-s'))!,
    );
    const err = await locateDescriptor(extent).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(VmdkFormatError);
    expect(err).toMatchObject({ code: 'ERR_VMDK_FORMAT', file: extent, offset: 36 });
  });

  it("applies the header's bounds: a descriptor area over 1 MiB is ERR_VMDK_LIMIT", async () => {
    const path = await make('big.vmdk', 'monolithicSparse');
    const h = Buffer.from(await head(path));
    h.writeBigUInt64LE(4096n, 36); // descriptorSize: 2 MiB
    expect(() => embeddedDescriptorArea(h, path)).toThrow(expect.objectContaining({ code: 'ERR_VMDK_LIMIT', offset: 36 }));
  });
});

it('no pipeline module decodes the sparse header itself', () => {
  const root = join(import.meta.dirname, '..', '..', 'src', 'pipeline');
  for (const f of readdirSync(root).filter((n) => n.endsWith('.ts'))) {
    const code = readFileSync(join(root, f), 'utf8');
    expect(code, f).not.toMatch(/KDMV|readBigUInt64LE\((28|36)\)/);
  }
});
