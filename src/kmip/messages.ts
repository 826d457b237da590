/**
 * KMIP request builders and response parsers for the operations vmseal speaks.
 *
 * A request message (one batch item, synchronous):
 *
 *   Request Message
 *     Request Header
 *       Protocol Version { Major, Minor }
 *       [Authentication { Credential { Credential Type = Username and Password,
 *                                      Credential Value { Username, Password } } }]
 *       Batch Count = 1
 *     Batch Item
 *       Operation
 *       Request Payload { …operation-specific… }
 *
 * A response message:
 *
 *   Response Message
 *     Response Header { Protocol Version, Time Stamp, Batch Count }
 *     Batch Item { [Operation], Result Status, [Result Reason], [Result Message], [Response Payload] }
 *
 * KMIP 1.x and 2.0 differ in how attributes travel: 1.x wraps each in an Attribute structure
 * (Attribute Name text + Attribute Value) inside a Template-Attribute; 2.0 puts the attributes'
 * own tags inside an Attributes structure, and Get Attributes names them by Attribute Reference
 * (an enumeration holding the attribute's tag).
 */
import { KmipError } from './errors.js';
import {
  CredentialType,
  CryptographicAlgorithm,
  KeyFormatType,
  NameType,
  ObjectType,
  Operation,
  QueryFunction,
  ResultReason,
  ResultStatus,
  RevocationReasonCode,
  State,
  Tag,
  nameOf,
  tagName,
  type KeyState,
} from './tags.js';
import { TtlvWriter, type TtlvItem, type TtlvType } from './ttlv.js';

export interface ProtocolVersion {
  readonly major: number;
  readonly minor: number;
}

export const formatVersion = (v: ProtocolVersion): string => `${v.major}.${v.minor}`;
const isV2 = (v: ProtocolVersion): boolean => v.major >= 2;

export interface Credential {
  readonly username: string;
  readonly password?: string;
}

export interface RequestOptions {
  readonly version: ProtocolVersion;
  readonly credential?: Credential;
}

/** Attribute names as KMIP 1.x spells them in Attribute Name. */
const ATTRIBUTE_NAME_BY_TAG: Record<number, string> = {
  [Tag.CryptographicAlgorithm]: 'Cryptographic Algorithm',
  [Tag.CryptographicLength]: 'Cryptographic Length',
  [Tag.CryptographicUsageMask]: 'Cryptographic Usage Mask',
  [Tag.Name]: 'Name',
  [Tag.State]: 'State',
  [Tag.ObjectType]: 'Object Type',
  [Tag.UniqueIdentifier]: 'Unique Identifier',
  [Tag.InitialDate]: 'Initial Date',
  [Tag.ActivationDate]: 'Activation Date',
};

// ---------------------------------------------------------------------------------------------
// Requests

/** Encode a whole request message around one operation's payload. */
export function encodeRequest(operation: number, opts: RequestOptions, payload: (w: TtlvWriter) => void): Buffer {
  const w = new TtlvWriter();
  w.begin(Tag.RequestMessage);
  w.begin(Tag.RequestHeader);
  w.struct(Tag.ProtocolVersion, (p) => p.integer(Tag.ProtocolVersionMajor, opts.version.major).integer(Tag.ProtocolVersionMinor, opts.version.minor));
  if (opts.credential) {
    const { username, password } = opts.credential;
    w.struct(Tag.Authentication, (a) =>
      a.struct(Tag.Credential, (c) => {
        c.enumeration(Tag.CredentialType, CredentialType.UsernameAndPassword);
        c.struct(Tag.CredentialValue, (v) => {
          v.textString(Tag.Username, username);
          if (password !== undefined) v.textString(Tag.Password, password);
        });
      }),
    );
  }
  w.integer(Tag.BatchCount, 1);
  w.end();
  w.begin(Tag.BatchItem);
  w.enumeration(Tag.Operation, operation);
  w.begin(Tag.RequestPayload);
  payload(w);
  w.end();
  w.end();
  w.end();
  return w.finish();
}

export function discoverVersionsPayload(versions: readonly ProtocolVersion[] = []): (w: TtlvWriter) => void {
  return (w) => {
    for (const v of versions) w.struct(Tag.ProtocolVersion, (p) => p.integer(Tag.ProtocolVersionMajor, v.major).integer(Tag.ProtocolVersionMinor, v.minor));
  };
}

function writeName(w: TtlvWriter, tag: number, name: string): void {
  w.struct(tag, (n) => n.textString(Tag.NameValue, name).enumeration(Tag.NameType, NameType.UninterpretedTextString));
}

/** 1.x: Attribute { Attribute Name, Attribute Value } with the value written by `value`. */
function writeAttribute(w: TtlvWriter, name: string, value: (w: TtlvWriter) => void): void {
  w.struct(Tag.Attribute, (a) => {
    a.textString(Tag.AttributeName, name);
    value(a);
  });
}

export interface CreateSymmetricKeyRequest {
  /** Key length in bits (default: 256). */
  readonly lengthBits?: number;
  /** Cryptographic Usage Mask bits. */
  readonly usageMask: number;
  readonly name?: string;
}

export function createPayload(req: CreateSymmetricKeyRequest, version: ProtocolVersion): (w: TtlvWriter) => void {
  const bits = req.lengthBits ?? 256;
  return (w) => {
    w.enumeration(Tag.ObjectType, ObjectType.SymmetricKey);
    if (isV2(version)) {
      w.struct(Tag.Attributes, (a) => {
        a.enumeration(Tag.CryptographicAlgorithm, CryptographicAlgorithm.AES);
        a.integer(Tag.CryptographicLength, bits);
        a.integer(Tag.CryptographicUsageMask, req.usageMask);
        if (req.name !== undefined) writeName(a, Tag.Name, req.name);
      });
    } else {
      w.struct(Tag.TemplateAttribute, (t) => {
        writeAttribute(t, 'Cryptographic Algorithm', (a) => a.enumeration(Tag.AttributeValue, CryptographicAlgorithm.AES));
        writeAttribute(t, 'Cryptographic Length', (a) => a.integer(Tag.AttributeValue, bits));
        writeAttribute(t, 'Cryptographic Usage Mask', (a) => a.integer(Tag.AttributeValue, req.usageMask));
        if (req.name !== undefined) writeAttribute(t, 'Name', (a) => writeName(a, Tag.AttributeValue, req.name!));
      });
    }
  };
}

/** Payload of Activate, Get, Destroy and Get Attributes (all attributes): just the Unique Identifier. */
export function uniqueIdentifierPayload(uniqueIdentifier: string): (w: TtlvWriter) => void {
  return (w) => {
    w.textString(Tag.UniqueIdentifier, uniqueIdentifier);
  };
}

export function locateByNamePayload(name: string, version: ProtocolVersion): (w: TtlvWriter) => void {
  return (w) => {
    if (isV2(version)) w.struct(Tag.Attributes, (a) => writeName(a, Tag.Name, name));
    else writeAttribute(w, 'Name', (a) => writeName(a, Tag.AttributeValue, name));
  };
}

/** Get Attributes for the attributes whose tags are given (1.x by Attribute Name, 2.0 by Attribute Reference). */
export function getAttributesPayload(uniqueIdentifier: string, attributeTags: readonly number[], version: ProtocolVersion): (w: TtlvWriter) => void {
  return (w) => {
    w.textString(Tag.UniqueIdentifier, uniqueIdentifier);
    for (const tag of attributeTags) {
      if (isV2(version)) w.enumeration(Tag.AttributeReference, tag);
      else {
        const name = ATTRIBUTE_NAME_BY_TAG[tag];
        if (name === undefined) throw new KmipError('ERR_INVALID_ARGUMENT', `No KMIP 1.x attribute name known for ${tagName(tag)}`);
        w.textString(Tag.AttributeName, name);
      }
    }
  };
}

export function revokePayload(uniqueIdentifier: string, reasonCode: number = RevocationReasonCode.CessationOfOperation): (w: TtlvWriter) => void {
  return (w) => {
    w.textString(Tag.UniqueIdentifier, uniqueIdentifier);
    w.struct(Tag.RevocationReason, (r) => r.enumeration(Tag.RevocationReasonCode, reasonCode));
  };
}

export function queryPayload(
  functions: readonly number[] = [QueryFunction.Operations, QueryFunction.Objects, QueryFunction.ServerInformation],
): (w: TtlvWriter) => void {
  return (w) => {
    for (const f of functions) w.enumeration(Tag.QueryFunction, f);
  };
}

// ---------------------------------------------------------------------------------------------
// Responses

export interface KmipResponse {
  readonly version: ProtocolVersion;
  readonly timeStamp?: bigint;
  readonly operation?: number;
  readonly resultStatus: number;
  readonly resultReason?: number;
  readonly resultMessage?: string;
  readonly payload?: TtlvItem & { type: 'Structure' };
}

function protocolError(message: string): KmipError {
  return new KmipError('ERR_KMIP_PROTOCOL', message);
}

type ItemOf<T extends TtlvType> = Extract<TtlvItem, { type: T }>;

/** The first child with `tag` (optionally checked to be of `type`), or undefined. */
export function findChild<T extends TtlvType>(parent: TtlvItem, tag: number, type: T): ItemOf<T> | undefined {
  if (parent.type !== 'Structure') return undefined;
  const found = parent.value.find((c) => c.tag === tag);
  if (found === undefined) return undefined;
  if (found.type !== type) {
    throw protocolError(`${tagName(tag)} in ${tagName(parent.tag)} must be a ${type} but is a ${found.type}`);
  }
  return found as ItemOf<T>;
}

export function requireChild<T extends TtlvType>(parent: TtlvItem, tag: number, type: T): ItemOf<T> {
  const found = findChild(parent, tag, type);
  if (found === undefined) throw protocolError(`${tagName(parent.tag)} is missing ${tagName(tag)}`);
  return found;
}

export function findChildren<T extends TtlvType>(parent: TtlvItem, tag: number, type: T): ItemOf<T>[] {
  if (parent.type !== 'Structure') return [];
  return parent.value
    .filter((c) => c.tag === tag)
    .map((c) => {
      if (c.type !== type) throw protocolError(`${tagName(tag)} in ${tagName(parent.tag)} must be a ${type} but is a ${c.type}`);
      return c as ItemOf<T>;
    });
}

function parseVersion(item: TtlvItem): ProtocolVersion {
  return {
    major: requireChild(item, Tag.ProtocolVersionMajor, 'Integer').value,
    minor: requireChild(item, Tag.ProtocolVersionMinor, 'Integer').value,
  };
}

/** Check the response message's shape (one batch item) and pull out its parts. */
export function parseResponse(message: TtlvItem): KmipResponse {
  if (message.tag !== Tag.ResponseMessage || message.type !== 'Structure') {
    throw protocolError(`expected a Response Message structure but received ${tagName(message.tag)} (${message.type})`);
  }
  const header = requireChild(message, Tag.ResponseHeader, 'Structure');
  const version = parseVersion(requireChild(header, Tag.ProtocolVersion, 'Structure'));
  const timeStamp = findChild(header, Tag.TimeStamp, 'DateTime')?.value;
  const batchCount = requireChild(header, Tag.BatchCount, 'Integer').value;
  const items = findChildren(message, Tag.BatchItem, 'Structure');
  if (batchCount !== 1 || items.length !== 1) {
    throw protocolError(`expected exactly one Batch Item but the response has Batch Count ${batchCount} and ${items.length} item(s)`);
  }
  const item = items[0]!;
  const resultReason = findChild(item, Tag.ResultReason, 'Enumeration')?.value;
  const resultMessage = findChild(item, Tag.ResultMessage, 'TextString')?.value;
  const operation = findChild(item, Tag.Operation, 'Enumeration')?.value;
  const payload = findChild(item, Tag.ResponsePayload, 'Structure');
  return {
    version,
    resultStatus: requireChild(item, Tag.ResultStatus, 'Enumeration').value,
    ...(timeStamp !== undefined && { timeStamp }),
    ...(operation !== undefined && { operation }),
    ...(resultReason !== undefined && { resultReason }),
    ...(resultMessage !== undefined && { resultMessage }),
    ...(payload !== undefined && { payload }),
  };
}

/**
 * Throw ERR_KMIP_OPERATION_FAILED unless the response reports Success for `operation`; return the
 * payload (an empty structure when the server sent none).
 */
export function expectSuccess(response: KmipResponse, operation: number, endpoint?: string): TtlvItem & { type: 'Structure' } {
  const opName = nameOf(Operation, operation);
  if (response.resultStatus !== ResultStatus.Success) {
    const status = nameOf(ResultStatus, response.resultStatus);
    const reason = response.resultReason === undefined ? undefined : nameOf(ResultReason, response.resultReason);
    const text = response.resultMessage === undefined ? '' : `: ${response.resultMessage}`;
    throw new KmipError(
      'ERR_KMIP_OPERATION_FAILED',
      `KMIP ${opName} failed${endpoint ? ` on ${endpoint}` : ''}: ${status}${reason ? `/${reason}` : ''}${text}`,
      {
        operation: opName,
        resultStatus: status,
        ...(endpoint !== undefined && { endpoint }),
        ...(reason !== undefined && { resultReason: reason }),
        ...(response.resultMessage !== undefined && { resultMessage: response.resultMessage }),
      },
    );
  }
  if (response.operation !== undefined && response.operation !== operation) {
    throw protocolError(`expected a response to ${opName} but received one to ${nameOf(Operation, response.operation)}`);
  }
  return response.payload ?? { tag: Tag.ResponsePayload, type: 'Structure', value: [] };
}

export function parseDiscoverVersions(payload: TtlvItem): ProtocolVersion[] {
  return findChildren(payload, Tag.ProtocolVersion, 'Structure').map(parseVersion);
}

export function parseUniqueIdentifier(payload: TtlvItem): string {
  return requireChild(payload, Tag.UniqueIdentifier, 'TextString').value;
}

export function parseLocate(payload: TtlvItem): string[] {
  return findChildren(payload, Tag.UniqueIdentifier, 'TextString').map((i) => i.value);
}

export interface SymmetricKeyObject {
  readonly uniqueIdentifier: string;
  readonly keyFormatType: string;
  readonly algorithm?: string;
  readonly lengthBits?: number;
  /** A view into the response buffer: copy it before the buffer is wiped. */
  readonly material: Buffer;
}

/**
 * Get response → the symmetric key's material. Accepts Key Format Type Raw (Key Material is a Byte
 * String) and Transparent Symmetric Key (Key Material is a structure holding Key). Wrapped keys
 * (Key Wrapping Data present) are refused: vmseal asks for, and can only use, plaintext material.
 */
export function parseGetSymmetricKey(payload: TtlvItem): SymmetricKeyObject {
  const objectType = requireChild(payload, Tag.ObjectType, 'Enumeration').value;
  const uniqueIdentifier = parseUniqueIdentifier(payload);
  if (objectType !== ObjectType.SymmetricKey) {
    throw new KmipError('ERR_KMIP_KEY', `KMIP object ${uniqueIdentifier} is a ${nameOf(ObjectType, objectType)}, not a SymmetricKey`);
  }
  const keyBlock = requireChild(requireChild(payload, Tag.SymmetricKey, 'Structure'), Tag.KeyBlock, 'Structure');
  const format = requireChild(keyBlock, Tag.KeyFormatType, 'Enumeration').value;
  if (findChild(keyBlock, Tag.KeyWrappingData, 'Structure') !== undefined) {
    throw new KmipError('ERR_KMIP_KEY', `KMIP object ${uniqueIdentifier} was returned wrapped (Key Wrapping Data present); vmseal needs its plaintext value`);
  }
  const keyValue = requireChild(keyBlock, Tag.KeyValue, 'Structure');
  let material: Buffer;
  if (format === KeyFormatType.Raw) {
    material = requireChild(keyValue, Tag.KeyMaterial, 'ByteString').value;
  } else if (format === KeyFormatType.TransparentSymmetricKey) {
    material = requireChild(requireChild(keyValue, Tag.KeyMaterial, 'Structure'), Tag.Key, 'ByteString').value;
  } else {
    throw new KmipError(
      'ERR_KMIP_KEY',
      `KMIP object ${uniqueIdentifier} has Key Format Type ${nameOf(KeyFormatType, format)}; expected Raw or TransparentSymmetricKey`,
    );
  }
  const algorithm = findChild(keyBlock, Tag.CryptographicAlgorithm, 'Enumeration')?.value;
  const lengthBits = findChild(keyBlock, Tag.CryptographicLength, 'Integer')?.value;
  return {
    uniqueIdentifier,
    keyFormatType: nameOf(KeyFormatType, format),
    material,
    ...(algorithm !== undefined && { algorithm: nameOf(CryptographicAlgorithm, algorithm) }),
    ...(lengthBits !== undefined && { lengthBits }),
  };
}

/**
 * Get Attributes response → the attribute items by tag. 1.x: each Attribute's Attribute Value,
 * keyed by the tag its Attribute Name stands for (unknown names are skipped); 2.0: the items of
 * the Attributes structure.
 */
export function parseGetAttributes(payload: TtlvItem): Map<number, TtlvItem> {
  const out = new Map<number, TtlvItem>();
  const v2 = findChild(payload, Tag.Attributes, 'Structure');
  if (v2 !== undefined) {
    for (const item of v2.value) if (!out.has(item.tag)) out.set(item.tag, item);
    return out;
  }
  const tagByName = new Map(Object.entries(ATTRIBUTE_NAME_BY_TAG).map(([tag, name]) => [name, Number(tag)]));
  for (const attr of findChildren(payload, Tag.Attribute, 'Structure')) {
    const name = requireChild(attr, Tag.AttributeName, 'TextString').value;
    const value = attr.type === 'Structure' ? attr.value.find((c) => c.tag === Tag.AttributeValue) : undefined;
    if (value === undefined) throw protocolError(`Attribute "${name}" has no Attribute Value`);
    const tag = tagByName.get(name);
    if (tag !== undefined && !out.has(tag)) out.set(tag, value);
  }
  return out;
}

export function parseState(payload: TtlvItem): KeyState {
  const item = parseGetAttributes(payload).get(Tag.State);
  if (item === undefined) throw protocolError('Get Attributes response has no State attribute');
  if (item.type !== 'Enumeration') throw protocolError(`State attribute must be an Enumeration but is a ${item.type}`);
  const name = nameOf(State, item.value);
  if (!(name in State)) throw protocolError(`State attribute has unknown value ${name}`);
  return name as KeyState;
}

/**
 * Every Name Value of a Get Attributes response (a key may carry several Names). 1.x: the values of
 * the Attributes named "Name"; 2.0: the Name items of the Attributes structure.
 */
export function parseNames(payload: TtlvItem): string[] {
  const v2 = findChild(payload, Tag.Attributes, 'Structure');
  const names =
    v2 !== undefined
      ? v2.value.filter((i) => i.tag === Tag.Name)
      : findChildren(payload, Tag.Attribute, 'Structure')
          .filter((a) => findChild(a, Tag.AttributeName, 'TextString')?.value === 'Name')
          .map((a) => a.value.find((c) => c.tag === Tag.AttributeValue))
          .filter((v): v is TtlvItem => v !== undefined);
  return names.flatMap((n) => {
    if (n.type !== 'Structure') throw protocolError(`Name attribute must be a Structure but is a ${n.type}`);
    const value = findChild(n, Tag.NameValue, 'TextString');
    return value === undefined ? [] : [value.value];
  });
}

export interface QueryResult {
  readonly operations: string[];
  readonly objectTypes: string[];
  readonly vendorIdentification?: string;
}

export function parseQuery(payload: TtlvItem): QueryResult {
  const vendor = findChild(payload, Tag.VendorIdentification, 'TextString')?.value;
  return {
    operations: findChildren(payload, Tag.Operation, 'Enumeration').map((i) => nameOf(Operation, i.value)),
    objectTypes: findChildren(payload, Tag.ObjectType, 'Enumeration').map((i) => nameOf(ObjectType, i.value)),
    ...(vendor !== undefined && { vendorIdentification: vendor }),
  };
}
