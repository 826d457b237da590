import { describe, it, expect } from 'vitest';
import { Descriptor, MAX_DESCRIPTOR_BYTES, VmdkFormatError } from '../../src/vmdk/index.js';

const QEMU = `# Disk DescriptorFile
version=1
CID=63a5ce90
parentCID=ffffffff
createType="monolithicSparse"

# Extent description
RW 131072 SPARSE "disk.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.geometry.cylinders = "130"
ddb.geometry.heads = "16"
ddb.geometry.sectors = "63"
ddb.adapterType = "ide"
ddb.toolsVersion = "2147483647"
`;

const VMWARE_CRLF = [
  '# Disk DescriptorFile',
  'version=1',
  'encoding="UTF-8"',
  'CID=fffffffe',
  'parentCID=ffffffff',
  'isNativeSnapshot="no"',
  'createType="vmfs"',
  '',
  '# Extent description',
  'RW 41943040 VMFS "Server-flat.vmdk"',
  '',
  '# The Disk Data Base ',
  '#DDB',
  '',
  '# a custom comment, kept',
  'ddb.adapterType = "lsilogic"',
  'ddb.longContentID = "0123456789abcdef0123456789abcdef"',
  'ddb.uuid = "60 00 C2 9b 1d 3c 4e 7a-8b 1f 2d 3e 4f 50 61 72"',
  'ddb.comment = "naïve — 日本語"',
  'ddb.virtualHWVersion = "13"',
].join('\r\n');

describe('Descriptor', () => {
  it('parses header, extents and ddb, and round-trips byte for byte', () => {
    const d = Descriptor.parse(QEMU);
    expect(d.get('version')).toBe('1');
    expect(d.get('CID')).toBe('63a5ce90');
    expect(d.get('createType')).toBe('monolithicSparse');
    expect(d.createType).toBe('monolithicSparse');
    expect(d.get('ddb.geometry.heads')).toBe('16');
    expect(d.get('missing')).toBeUndefined();
    expect(d.extents).toEqual([{ access: 'RW', sectors: 131072, type: 'SPARSE', file: 'disk.vmdk', offset: 0, line: 8 }]);
    expect(d.toString()).toBe(QEMU);
    expect(d.crlf).toBe(false);
    expect(d.entries()[0]).toEqual(['version', '1']);
    expect(d.entries().length).toBe(10);
  });

  it('keeps CRLF, UTF-8, comments and unknown keys through a round trip and an edit', () => {
    const bytes = Buffer.from(VMWARE_CRLF, 'utf8');
    const d = Descriptor.parse(bytes);
    expect(d.toString()).toBe(VMWARE_CRLF);
    expect(d.crlf).toBe(true);
    expect(d.get('ddb.comment')).toBe('naïve — 日本語');
    expect(d.get('isNativeSnapshot')).toBe('no');
    expect(d.extents[0]).toMatchObject({ type: 'VMFS', file: 'Server-flat.vmdk', offset: 0, sectors: 41943040 });
    d.set('ddb.adapterType', 'buslogic');
    const out = d.toString();
    expect(out).toBe(VMWARE_CRLF.replace('"lsilogic"', '"buslogic"'));
    d.set('encryption.keySafe', 'vmware:key/x');
    const lines = d.toString().split('\r\n');
    expect(lines[lines.indexOf('createType="vmfs"') + 1]).toBe('encryption.keySafe = "vmware:key/x"');
    expect(d.toString().includes('\n') && !/[^\r]\n/.test(d.toString())).toBe(true);
  });

  it('stops at the first NUL (embedded descriptor padding) and keeps a BOM', () => {
    const padded = Buffer.concat([Buffer.from(QEMU), Buffer.alloc(2000)]);
    expect(Descriptor.parse(padded).toString()).toBe(QEMU);
    const bom = '\uFEFF' + QEMU;
    expect(Descriptor.parse(Buffer.from(bom)).toString()).toBe(bom);
  });

  it('set(): existing lines keep place and style; new header keys go after createType in order; ddb keys into the DDB', () => {
    const d = Descriptor.parse(QEMU);
    d.set('CID', 'deadbeef');
    d.set('encryption.a', '1');
    d.set('encryption.b', '2');
    d.set('ddb.encryption.c', '3');
    d.set('x.after.version', '4', { after: 'version' });
    const lines = d.toString().split('\n');
    expect(lines[1]).toBe('version=1');
    expect(lines[2]).toBe('x.after.version = "4"');
    expect(lines[3]).toBe('CID=deadbeef');
    expect(lines[5]).toBe('createType="monolithicSparse"');
    expect(lines[6]).toBe('encryption.a = "1"');
    expect(lines[7]).toBe('encryption.b = "2"');
    expect(lines[lines.length - 2]).toBe('ddb.encryption.c = "3"');
    expect(Descriptor.parse(d.toString()).entries()).toEqual(d.entries());
    expect(d.isEncrypted()).toBe(true);
  });

  it('delete() removes exactly one line; required keys cannot be deleted', () => {
    const d = Descriptor.parse(QEMU);
    expect(d.delete('ddb.toolsVersion')).toBe(true);
    expect(d.delete('ddb.toolsVersion')).toBe(false);
    expect(d.toString()).toBe(QEMU.replace('ddb.toolsVersion = "2147483647"\n', ''));
    expect(() => d.delete('createType')).toThrowError(VmdkFormatError);
    const noEol = Descriptor.parse(QEMU.trimEnd());
    noEol.set('ddb.new', 'v');
    expect(noEol.toString()).toBe(QEMU + 'ddb.new = "v"');
    noEol.delete('ddb.new');
    expect(noEol.toString()).toBe(QEMU.trimEnd());
  });

  it('refuses values and keys it cannot write faithfully', () => {
    const d = Descriptor.parse(QEMU);
    for (const bad of ['a"b', 'a\nb', 'a\rb', 'a\0b']) {
      expect(() => d.set('ddb.x', bad)).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    for (const key of ['', 'a b', 'a=b', '#x', 'x"']) {
      expect(() => d.set(key, 'v')).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    }
    expect(() => d.set('k', 'v', { after: 'nope' })).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(d.toString()).toBe(QEMU);
  });

  it('clone() is independent', () => {
    const d = Descriptor.parse(QEMU);
    const c = d.clone();
    c.set('ddb.adapterType', 'lsilogic');
    expect(d.get('ddb.adapterType')).toBe('ide');
    expect(c.get('ddb.adapterType')).toBe('lsilogic');
  });

  it('parses every extent form', () => {
    const d = Descriptor.parse('version=1\ncreateType="custom"\nRW 10 FLAT "a b.vmdk" 7\nRDONLY 20 SPARSE "s.vmdk"\nNOACCESS 30 ZERO\nRW 40 VMFS "v.vmdk"\n');
    expect(d.extents.map((e) => [e.access, e.sectors, e.type, e.file, e.offset, e.line])).toEqual([
      ['RW', 10, 'FLAT', 'a b.vmdk', 7, 3],
      ['RDONLY', 20, 'SPARSE', 's.vmdk', 0, 4],
      ['NOACCESS', 30, 'ZERO', undefined, 0, 5],
      ['RW', 40, 'VMFS', 'v.vmdk', 0, 6],
    ]);
  });

  it('errors name the line and file', () => {
    const cases: Array<[string, string, number | undefined]> = [
      ['createType="x"\nRW 1 ZERO\n', 'ERR_VMDK_FORMAT', undefined], // no version
      ['version=1\nRW 1 ZERO\n', 'ERR_VMDK_FORMAT', undefined], // no createType
      ['version=1\ncreateType="x"\n', 'ERR_VMDK_FORMAT', undefined], // no extents
      ['version=1\ncreateType="x"\nRW 1 ZERO\nversion=2\n', 'ERR_VMDK_FORMAT', 4],
      ['version=1\ncreateType="x"\nCID=xyz\nRW 1 ZERO\n', 'ERR_VMDK_FORMAT', 3],
      ['version=1\ncreateType="x"\nRW 1 FLAT "a"\nRW 99999999999999999999 FLAT "a"\n', 'ERR_VMDK_LIMIT', 4],
      ['version=1\ncreateType="x"\nRW 1 ZERO "f"\n', 'ERR_VMDK_FORMAT', 3],
      ['version=1\ncreateType="x"\nencoding="windows-1252"\nRW 1 ZERO\n', 'ERR_VMDK_ENCODING', 3],
      ['version=1\ncreateType="x"\n  garbage line\nRW 1 ZERO\n', 'ERR_VMDK_FORMAT', 3],
    ];
    for (const [text, code, line] of cases) {
      let err: unknown;
      try {
        Descriptor.parse(text, { file: '/x/d.vmdk' });
      } catch (e) {
        err = e;
      }
      expect(err, text).toBeInstanceOf(VmdkFormatError);
      expect((err as VmdkFormatError).code, text).toBe(code);
      expect((err as VmdkFormatError).line, text).toBe(line);
      expect((err as VmdkFormatError).file).toBe('/x/d.vmdk');
    }
    expect(() => Descriptor.parse(QEMU + '#'.repeat(MAX_DESCRIPTOR_BYTES))).toThrowError(expect.objectContaining({ code: 'ERR_VMDK_LIMIT' }));
    expect(() => Descriptor.parse(Buffer.from([0x76, 0xff, 0x0a]))).toThrowError(expect.objectContaining({ code: 'ERR_VMDK_ENCODING', line: 1, offset: 1 }));
  });
});
