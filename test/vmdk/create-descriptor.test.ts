// createDisk opens the monolithicSparse disk it has just written with the descriptor it wrote into
// it, not by reading the embedded descriptor back and parsing it again: the disk must then hold
// exactly the descriptor a later open of the file reads, and refuse what that open would refuse.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDisk, Descriptor, openDisk, type VirtualDisk } from '../../src/vmdk/index.js';
import { parseSparseHeader } from '../../src/vmdk/sparse-header.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-create-descriptor-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The descriptor of `disk` (a VmdkDisk), and its plain fields, to compare two of them. */
function described(disk: VirtualDisk): { file: string | undefined; text: string; entries: Array<[string, string]>; extents: unknown } {
  const d = (disk as VirtualDisk & { descriptor: Descriptor | undefined }).descriptor;
  if (d === undefined) throw new Error('the disk has no descriptor');
  return { file: d.file, text: d.toString(), entries: d.entries(), extents: d.extents };
}

describe('createDisk (monolithicSparse)', () => {
  it('holds the descriptor written into the file, named after the file, as an open of it would', async () => {
    const path = join(dir, 'lines.vmdk');
    const disk = await createDisk(path, {
      capacity: 4 << 20,
      descriptorLines: [
        ['encryption.format', '1'],
        ['ddb.comment', 'set after the ddb lines'],
        ['other', 'after createType'],
      ],
    });
    const created = described(disk);
    await disk.close();

    const bytes = await readFile(path);
    const header = parseSparseHeader(bytes.subarray(0, 512), path);
    const area = bytes.subarray(header.descriptorOffset * 512, (header.descriptorOffset + header.descriptorSize) * 512);
    const written = Descriptor.parse(area, { file: path });
    expect(created).toEqual({ file: path, text: written.toString(), entries: written.entries(), extents: written.extents });

    const reopened = await openDisk(path, { allowEncrypted: true });
    try {
      expect(described(reopened)).toEqual(created);
    } finally {
      await reopened.close();
    }
  });

  it('gives each new disk its own random CID (8 hex digits) and UUID (16 hex pairs and spaces)', async () => {
    const ids = [];
    for (const name of ['id-a.vmdk', 'id-b.vmdk']) {
      const disk = await createDisk(join(dir, name), { capacity: 4 << 20 });
      const d = (disk as VirtualDisk & { descriptor: Descriptor }).descriptor;
      ids.push({ cid: d.get('CID'), uuid: d.get('ddb.uuid') });
      await disk.close();
    }
    for (const { cid, uuid } of ids) {
      expect(cid).toMatch(/^[0-9a-f]{8}$/);
      expect(uuid).toMatch(/^[0-9a-f]{2}( [0-9a-f]{2}){15}$/);
    }
    expect(ids[0]!.cid).not.toBe(ids[1]!.cid);
    expect(ids[0]!.uuid).not.toBe(ids[1]!.uuid);
  });

  it('refuses a descriptor line an open would refuse (an encoding other than UTF-8)', async () => {
    const path = join(dir, 'latin1.vmdk');
    await expect(createDisk(path, { capacity: 4 << 20, descriptorLines: [['encoding', 'latin1']] })).rejects.toMatchObject({
      code: 'ERR_VMDK_ENCODING',
      message: `descriptor encoding "latin1" is not supported (only UTF-8) (${path}, line 6)`,
      file: path,
      line: 6,
    });
  });
});

describe('Descriptor.named', () => {
  it('is what parsing its own text under that file name gives, as a separate copy', () => {
    const d = Descriptor.parse('# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicSparse"\nRW 8 SPARSE "a.vmdk"\n');
    d.set('ddb.uuid', '1 2 3');
    const named = d.named('/x/a.vmdk');
    const parsed = Descriptor.parse(d.toString(), { file: '/x/a.vmdk' });
    expect(named.file).toBe('/x/a.vmdk');
    expect(named.toString()).toBe(parsed.toString());
    expect(named.entries()).toEqual(parsed.entries());
    expect(named.extents).toEqual(parsed.extents);
    named.set('ddb.uuid', 'changed');
    expect(d.get('ddb.uuid')).toBe('1 2 3');
  });
});
