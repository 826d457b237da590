import { describe, it, expect } from 'vitest';
import { parseEncryption, unsafeValueReason, encryptionLines, LINE } from '../../src/disk/params.js';

const good: Array<[string, string]> = [
  ['version', '1'],
  ['createType', 'monolithicFlat'],
  [LINE.format, 'vmseal/1'],
  [LINE.cipher, 'aes-256-xts'],
  [LINE.unitSize, '512'],
  [LINE.diskId, '0123456789abcdef0123456789abcdef'],
  [LINE.authenticator, 'v1.abc'],
  [LINE.keySafe, 'vmware:key/list/(x)'],
  ['ddb.adapterType', 'ide'],
];

describe('descriptor value rules', () => {
  it.each([
    ['', 'empty'],
    ['a"b', `'"'`],
    ['a=b', `'='`],
    ['xxCIDxx', '"CID"'],
    ['parentFileNameHint', '"CID"'.replace('CID', 'parentFileNameHint')],
    ['createType', '"createType"'],
    ['tab\there', 'character code 9'],
    ['é', 'character code 233'],
    ['x'.repeat(4097), '4097 characters'],
  ])('refuses %j', (value, why) => {
    expect(unsafeValueReason(value)).toContain(why);
  });
  it('judges every character code as the rule says, naming the first bad one', () => {
    const codes = [...Array.from({ length: 0x180 }, (_, c) => c), 0x2028, 0xd800, 0xfeff, 0xffff];
    for (const c of codes) {
      const ch = String.fromCharCode(c);
      const wanted =
        c < 0x21 || c > 0x7e
          ? `it contains the character code ${c} at index 2 (printable ASCII only)`
          : c === 0x22
            ? `it contains '"' at index 2`
            : c === 0x3d
              ? `it contains '=' at index 2`
              : null;
      expect(unsafeValueReason(`ab${ch}c=`), `code ${c}`).toBe(wanted ?? "it contains '=' at index 4");
      expect(unsafeValueReason(`ab${ch}cd`), `code ${c}`).toBe(wanted);
    }
  });

  it('accepts KeySafe-like text', () => {
    expect(unsafeValueReason('vmware:key/list/(pair/(fqid/%3cVMWARE%2dNULL%3e/local/k1,HMAC%2dSHA%2d256,abc%2b%3d))')).toBeNull();
    expect(unsafeValueReason('cid-lowercase-is-fine')).toBeNull();
  });
  it('encryptionLines refuses to write an unsafe value', () => {
    expect(() =>
      encryptionLines({ formatVersion: 1, cipher: 'aes-256-xts', unitSize: 512, diskId: '0'.repeat(32), authenticator: 'v1.xCIDx', keySafe: 'k' }),
    ).toThrow(expect.objectContaining({ code: 'ERR_ENCRYPTION_METADATA' }));
  });
});

describe('parseEncryption', () => {
  it('a descriptor without encryption lines is plain', () => {
    expect(
      parseEncryption(
        [
          ['createType', 'monolithicFlat'],
          ['ddb.uuid', 'x'],
        ],
        'd',
      ),
    ).toBeNull();
  });
  it('reads the lines', () => {
    expect(parseEncryption(good, 'd')).toEqual({
      params: {
        formatVersion: 1,
        cipher: 'aes-256-xts',
        unitSize: 512,
        diskId: '0123456789abcdef0123456789abcdef',
        authenticator: 'v1.abc',
        keySafe: 'vmware:key/list/(x)',
      },
      job: undefined,
    });
    expect(parseEncryption([...good, [LINE.job, 'encrypt-in-place']], 'd')!.job).toBe('encrypt-in-place');
  });
  const bad: Array<[string, Array<[string, string]>, string]> = [
    [
      'VMware encryption',
      [
        ['encryption.keySafe', 'vmware:key/x'],
        ['encryption.data', 'abc'],
      ],
      'not by vmseal',
    ],
    ['a ddb.encryption key alone', [['ddb.encryption.foo', 'x']], 'no encryption.format'],
    ['an unknown key', [...good, ['encryption.extra', 'x']], 'unknown encryption line'],
    ['a duplicate', [...good, [LINE.cipher, 'aes-256-xts']], 'appears twice'],
    // Version 3 is the layered format of snapshot chains (read since chains); 4 is the future.
    ['a future version', good.map(([k, v]) => [k, k === LINE.format ? 'vmseal/4' : v] as [string, string]), 'version 4 is not supported'],
    ['version 3 without a layer id', good.map(([k, v]) => [k, k === LINE.format ? 'vmseal/3' : v] as [string, string]), 'encryption.layerId is missing'],
    ['a layer id before version 3', [...good, [LINE.layerId, 'a'.repeat(32)]], 'unknown encryption line encryption.layerId'],
    ['a data check in version 1', [...good, [LINE.dataCheck, `${'a'.repeat(64)}.${'-'.repeat(64)}`]], 'unknown encryption line encryption.dataCheck'],
    ['version 2 without a data check', good.map(([k, v]) => [k, k === LINE.format ? 'vmseal/2' : v] as [string, string]), 'encryption.dataCheck is missing'],
    [
      'a malformed data check',
      [...good.map(([k, v]) => [k, k === LINE.format ? 'vmseal/2' : v] as [string, string]), [LINE.dataCheck, `${'A'.repeat(64)}.${'-'.repeat(64)}`]],
      'must be 64 lowercase hexadecimal',
    ],
    ['a bad cipher', good.map(([k, v]) => [k, k === LINE.cipher ? 'aes-256-cbc' : v] as [string, string]), 'must be one of'],
    ['a bad unit size', good.map(([k, v]) => [k, k === LINE.unitSize ? '1024' : v] as [string, string]), 'must be one of'],
    ['a bad disk id', good.map(([k, v]) => [k, k === LINE.diskId ? 'XYZ' : v] as [string, string]), '32 lowercase hexadecimal'],
    ['a missing KeySafe', good.filter(([k]) => k !== LINE.keySafe), 'encryption.keySafe is missing'],
    ['an unsafe value', good.map(([k, v]) => [k, k === LINE.keySafe ? 'a=b' : v] as [string, string]), "contains '='"],
  ];
  it.each(bad)('refuses %s', (_what, entries, message) => {
    expect(() => parseEncryption(entries, 'disk.vmdk')).toThrow(
      expect.objectContaining({ code: 'ERR_ENCRYPTION_METADATA', message: expect.stringContaining(message) }),
    );
  });
});
