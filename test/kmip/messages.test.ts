import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import {
  createPayload,
  discoverVersionsPayload,
  encodeRequest,
  expectSuccess,
  getAttributesPayload,
  locateByNamePayload,
  parseDiscoverVersions,
  parseGetAttributes,
  parseGetSymmetricKey,
  parseLocate,
  parseQuery,
  parseResponse,
  parseState,
  parseUniqueIdentifier,
  queryPayload,
  revokePayload,
  uniqueIdentifierPayload,
  type ProtocolVersion,
} from '../../src/kmip/messages.js';
import { decodeTtlv, encodeTtlv, type TtlvItem } from '../../src/kmip/ttlv.js';
import { Operation, Tag, UsageMask } from '../../src/kmip/tags.js';
import { KmipError } from '../../src/kmip/errors.js';

interface Sample {
  id: string;
  version: string;
  direction: 'request' | 'response';
  hex: string;
}
const samples: Sample[] = JSON.parse(readFileSync(new URL('../fixtures/kmip/pykmip-samples.json', import.meta.url), 'utf8')).samples;
const sample = (id: string, direction: 'request' | 'response'): Buffer => {
  const s = samples.find((x) => x.id === id && x.direction === direction);
  if (!s) throw new Error(`no sample ${id} ${direction}`);
  return Buffer.from(s.hex, 'hex');
};
const response = (id: string) => parseResponse(decodeTtlv(sample(id, 'response')));

const V12: ProtocolVersion = { major: 1, minor: 2 };
const V20: ProtocolVersion = { major: 2, minor: 0 };
const ALL4 = UsageMask.Encrypt | UsageMask.Decrypt | UsageMask.WrapKey | UsageMask.UnwrapKey;

describe('request builders reproduce the captured PyKMIP requests byte for byte', () => {
  const cases: Array<[string, number, ProtocolVersion, Parameters<typeof encodeRequest>[2]]> = [
    ['discover-versions', Operation.DiscoverVersions, V12, discoverVersionsPayload()],
    ['query', Operation.Query, V12, queryPayload()],
    ['create', Operation.Create, V12, createPayload({ usageMask: ALL4, name: 'kek-sample' }, V12)],
    ['activate', Operation.Activate, V12, uniqueIdentifierPayload('1')],
    ['get', Operation.Get, V12, uniqueIdentifierPayload('1')],
    ['locate', Operation.Locate, V12, locateByNamePayload('kek-sample', V12)],
    ['get-attributes-all', Operation.GetAttributes, V12, getAttributesPayload('1', [], V12)],
    ['get-attributes-state', Operation.GetAttributes, V12, getAttributesPayload('1', [Tag.State, Tag.CryptographicLength], V12)],
    ['revoke', Operation.Revoke, V12, revokePayload('1')],
    ['destroy', Operation.Destroy, V12, uniqueIdentifierPayload('1')],
    ['get-after-destroy', Operation.Get, V12, uniqueIdentifierPayload('1')],
    ['get-unknown', Operation.Get, V12, uniqueIdentifierPayload('999999')],
    ['create-v2', Operation.Create, V20, createPayload({ usageMask: ALL4, name: 'kek-sample-v2' }, V20)],
    ['get-v2', Operation.Get, V20, uniqueIdentifierPayload('2')],
    ['destroy-v2', Operation.Destroy, V20, uniqueIdentifierPayload('2')],
  ];
  for (const [id, op, version, payload] of cases) {
    it(id, () => {
      expect(encodeRequest(op, { version }, payload).toString('hex')).toBe(sample(id, 'request').toString('hex'));
    });
  }

  it('KMIP 2.0 Get Attributes names attributes by Attribute Reference (the tag as an enumeration)', () => {
    const item = decodeTtlv(encodeRequest(Operation.GetAttributes, { version: V20 }, getAttributesPayload('7', [Tag.State], V20)));
    const payload = (item as unknown as { value: TtlvItem[] }).value[1]!;
    expect(payload).toMatchObject({ tag: Tag.BatchItem });
    const req = (payload as unknown as { value: TtlvItem[] }).value[1]!;
    expect(req).toEqual({
      tag: Tag.RequestPayload,
      type: 'Structure',
      value: [
        { tag: Tag.UniqueIdentifier, type: 'TextString', value: '7' },
        { tag: Tag.AttributeReference, type: 'Enumeration', value: Tag.State },
      ],
    });
  });
});

describe('request header credential', () => {
  it('encodes Username and Password in an Authentication structure before Batch Count', () => {
    const bytes = encodeRequest(Operation.Query, { version: V12, credential: { username: 'u', password: 'pw' } }, queryPayload([]));
    const expected =
      '42007801000000a842007701000000804200690100000020' +
      '42006a0200000004000000010000000042006b02000000040000000200000000' +
      '42000c0100000040' + // Authentication
      '4200230100000038' + // Credential
      '4200240500000004' +
      '0000000100000000' + // Credential Type = Username and Password
      '4200250100000020' + // Credential Value
      '4200990700000001' +
      '7500000000000000' + // Username "u"
      '4200a10700000002' +
      '7077000000000000' + // Password "pw"
      '42000d02000000040000000100000000' +
      '42000f010000001842005c050000000400000018000000004200790100000000';
    expect(bytes.toString('hex')).toBe(expected);
  });
});

describe('response parsers on the captured PyKMIP responses', () => {
  it('Discover Versions lists 2.0 down to 1.0', () => {
    const r = response('discover-versions');
    expect(r.version).toEqual(V12);
    expect(r.timeStamp).toBe(0x6b0b09ddn);
    expect(parseDiscoverVersions(expectSuccess(r, Operation.DiscoverVersions))).toEqual([
      { major: 2, minor: 0 },
      { major: 1, minor: 4 },
      { major: 1, minor: 3 },
      { major: 1, minor: 2 },
      { major: 1, minor: 1 },
      { major: 1, minor: 0 },
    ]);
  });

  it('Query names the operations and the vendor', () => {
    const q = parseQuery(expectSuccess(response('query'), Operation.Query));
    expect(q.vendorIdentification).toBe('PyKMIP 0.10.0 Software Server');
    expect(q.operations).toContain('Create');
    expect(q.operations).toContain('DiscoverVersions');
    expect(q.operations).toHaveLength(18);
  });

  it('Create, Activate, Revoke, Destroy return the Unique Identifier', () => {
    expect(parseUniqueIdentifier(expectSuccess(response('create'), Operation.Create))).toBe('1');
    expect(parseUniqueIdentifier(expectSuccess(response('activate'), Operation.Activate))).toBe('1');
    expect(parseUniqueIdentifier(expectSuccess(response('revoke'), Operation.Revoke))).toBe('1');
    expect(parseUniqueIdentifier(expectSuccess(response('destroy'), Operation.Destroy))).toBe('1');
    expect(parseUniqueIdentifier(expectSuccess(response('create-v2'), Operation.Create))).toBe('2');
  });

  it('Get returns the raw AES-256 key material (1.2 and 2.0)', () => {
    const k = parseGetSymmetricKey(expectSuccess(response('get'), Operation.Get));
    expect(k).toMatchObject({ uniqueIdentifier: '1', keyFormatType: 'Raw', algorithm: 'AES', lengthBits: 256 });
    expect(k.material.toString('hex')).toBe('92f16df0020f3b47fb024e5696124270aef677ac6fbd677f6f0d6aed8e2b4442');
    const k2 = parseGetSymmetricKey(expectSuccess(response('get-v2'), Operation.Get));
    expect(k2.material.toString('hex')).toBe('157cb1b8aab3014cebacac0be394481ec36caccdf025f3989a98879f6890da39');
  });

  it('Locate returns the matching ids', () => {
    expect(parseLocate(expectSuccess(response('locate'), Operation.Locate))).toEqual(['1']);
  });

  it('Get Attributes finds State in both the full and the selected answer', () => {
    expect(parseState(expectSuccess(response('get-attributes-all'), Operation.GetAttributes))).toBe('Active');
    expect(parseState(expectSuccess(response('get-attributes-state'), Operation.GetAttributes))).toBe('Active');
    const attrs = parseGetAttributes(expectSuccess(response('get-attributes-all'), Operation.GetAttributes));
    expect(attrs.get(Tag.CryptographicUsageMask)).toMatchObject({ type: 'Integer', value: 60 });
  });

  it('parses KMIP 2.0 Get Attributes answers (attributes in an Attributes structure)', () => {
    const payload: TtlvItem = {
      tag: Tag.ResponsePayload,
      type: 'Structure',
      value: [
        { tag: Tag.UniqueIdentifier, type: 'TextString', value: '3' },
        { tag: Tag.Attributes, type: 'Structure', value: [{ tag: Tag.State, type: 'Enumeration', value: 1 }] },
      ],
    };
    expect(parseState(payload)).toBe('PreActive');
  });

  it('an error answer becomes ERR_KMIP_OPERATION_FAILED with status, reason and message', () => {
    for (const [id, text] of [
      ['get-after-destroy', 'Could not locate object: 1'],
      ['get-unknown', 'Could not locate object: 999999'],
    ] as const) {
      let caught: unknown;
      try {
        expectSuccess(response(id), Operation.Get, '127.0.0.1:5696');
      } catch (err) {
        caught = err;
      }
      expect(caught).toBeInstanceOf(KmipError);
      expect(caught).toMatchObject({
        code: 'ERR_KMIP_OPERATION_FAILED',
        operation: 'Get',
        endpoint: '127.0.0.1:5696',
        resultStatus: 'OperationFailed',
        resultReason: 'ItemNotFound',
        resultMessage: text,
        message: `KMIP Get failed on 127.0.0.1:5696: OperationFailed/ItemNotFound: ${text}`,
      });
    }
  });

  it('refuses a response to another operation', () => {
    expect(() => expectSuccess(response('activate'), Operation.Get)).toThrow('expected a response to Get but received one to Activate');
  });
});

describe('response shape checks', () => {
  const header: TtlvItem = {
    tag: Tag.ResponseHeader,
    type: 'Structure',
    value: [
      {
        tag: Tag.ProtocolVersion,
        type: 'Structure',
        value: [
          { tag: Tag.ProtocolVersionMajor, type: 'Integer', value: 1 },
          { tag: Tag.ProtocolVersionMinor, type: 'Integer', value: 2 },
        ],
      },
      { tag: Tag.BatchCount, type: 'Integer', value: 1 },
    ],
  };
  const protocolErr = (item: TtlvItem): string => {
    try {
      parseResponse(item);
    } catch (err) {
      expect(err).toMatchObject({ code: 'ERR_KMIP_PROTOCOL' });
      return (err as Error).message;
    }
    throw new Error('expected ERR_KMIP_PROTOCOL');
  };

  it('wants a Response Message', () => {
    expect(protocolErr(decodeTtlv(sample('get', 'request')))).toMatch(/expected a Response Message structure but received RequestMessage/);
  });
  it('wants exactly one batch item', () => {
    expect(protocolErr({ tag: Tag.ResponseMessage, type: 'Structure', value: [header] })).toMatch(/exactly one Batch Item/);
  });
  it('wants a Result Status of the right type', () => {
    const item: TtlvItem = {
      tag: Tag.ResponseMessage,
      type: 'Structure',
      value: [header, { tag: Tag.BatchItem, type: 'Structure', value: [{ tag: Tag.ResultStatus, type: 'Integer', value: 0 }] }],
    };
    expect(protocolErr(item)).toMatch(/ResultStatus in BatchItem must be a Enumeration but is a Integer/);
  });
  it('a Get answer with a non-key object is ERR_KMIP_KEY', () => {
    const payload: TtlvItem = {
      tag: Tag.ResponsePayload,
      type: 'Structure',
      value: [
        { tag: Tag.ObjectType, type: 'Enumeration', value: 7 },
        { tag: Tag.UniqueIdentifier, type: 'TextString', value: '5' },
      ],
    };
    expect(() => parseGetSymmetricKey(payload)).toThrow(
      expect.objectContaining({ code: 'ERR_KMIP_KEY', message: 'KMIP object 5 is a SecretData, not a SymmetricKey' }),
    );
  });
  it('re-encodes a parsed message unchanged (parsers do not mutate)', () => {
    const bytes = sample('get', 'response');
    const item = decodeTtlv(bytes);
    parseGetSymmetricKey(expectSuccess(parseResponse(item), Operation.Get));
    expect(encodeTtlv(item).equals(bytes)).toBe(true);
  });
});
