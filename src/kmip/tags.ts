/**
 * KMIP numbers used by vmseal: tags (3 bytes, 0x42xxxx), item types, and the enumerations of the
 * fields it reads or writes. Values are from the KMIP 1.x/2.0 specifications (checked against
 * PyKMIP's kmip.core.enums). Plain objects rather than `const enum` so they survive per-file
 * transpilation and can be mapped back to names for error messages.
 */

export const Tag = {
  ActivationDate: 0x420001,
  Attribute: 0x420008,
  AttributeIndex: 0x420009,
  AttributeName: 0x42000a,
  AttributeValue: 0x42000b,
  Authentication: 0x42000c,
  BatchCount: 0x42000d,
  BatchErrorContinuationOption: 0x42000e,
  BatchItem: 0x42000f,
  BatchOrderOption: 0x420010,
  CompromiseOccurrenceDate: 0x420021,
  Credential: 0x420023,
  CredentialType: 0x420024,
  CredentialValue: 0x420025,
  CryptographicAlgorithm: 0x420028,
  CryptographicLength: 0x42002a,
  CryptographicUsageMask: 0x42002c,
  InitialDate: 0x420039,
  Key: 0x42003f,
  KeyBlock: 0x420040,
  KeyCompressionType: 0x420041,
  KeyFormatType: 0x420042,
  KeyMaterial: 0x420043,
  KeyValue: 0x420045,
  KeyWrappingData: 0x420046,
  MaximumItems: 0x42004f,
  MaximumResponseSize: 0x420050,
  Name: 0x420053,
  NameType: 0x420054,
  NameValue: 0x420055,
  ObjectType: 0x420057,
  Operation: 0x42005c,
  ProtocolVersion: 0x420069,
  ProtocolVersionMajor: 0x42006a,
  ProtocolVersionMinor: 0x42006b,
  QueryFunction: 0x420074,
  RequestHeader: 0x420077,
  RequestMessage: 0x420078,
  RequestPayload: 0x420079,
  ResponseHeader: 0x42007a,
  ResponseMessage: 0x42007b,
  ResponsePayload: 0x42007c,
  ResultMessage: 0x42007d,
  ResultReason: 0x42007e,
  ResultStatus: 0x42007f,
  RevocationMessage: 0x420080,
  RevocationReason: 0x420081,
  RevocationReasonCode: 0x420082,
  ServerInformation: 0x420088,
  State: 0x42008d,
  SymmetricKey: 0x42008f,
  TemplateAttribute: 0x420091,
  TimeStamp: 0x420092,
  UniqueBatchItemId: 0x420093,
  UniqueIdentifier: 0x420094,
  Username: 0x420099,
  VendorIdentification: 0x42009d,
  Password: 0x4200a1,
  Attributes: 0x420125,
  AttributeReference: 0x42013b,
} as const;

/** TTLV item types (the byte after the tag). */
export const ItemType = {
  Structure: 0x01,
  Integer: 0x02,
  LongInteger: 0x03,
  BigInteger: 0x04,
  Enumeration: 0x05,
  Boolean: 0x06,
  TextString: 0x07,
  ByteString: 0x08,
  DateTime: 0x09,
  Interval: 0x0a,
  DateTimeExtended: 0x0b,
} as const;
export type ItemTypeName = keyof typeof ItemType;

export const Operation = {
  Create: 0x01,
  CreateKeyPair: 0x02,
  Register: 0x03,
  Rekey: 0x04,
  DeriveKey: 0x05,
  Certify: 0x06,
  Recertify: 0x07,
  Locate: 0x08,
  Check: 0x09,
  Get: 0x0a,
  GetAttributes: 0x0b,
  GetAttributeList: 0x0c,
  AddAttribute: 0x0d,
  ModifyAttribute: 0x0e,
  DeleteAttribute: 0x0f,
  ObtainLease: 0x10,
  GetUsageAllocation: 0x11,
  Activate: 0x12,
  Revoke: 0x13,
  Destroy: 0x14,
  Archive: 0x15,
  Recover: 0x16,
  Validate: 0x17,
  Query: 0x18,
  Cancel: 0x19,
  Poll: 0x1a,
  Notify: 0x1b,
  Put: 0x1c,
  RekeyKeyPair: 0x1d,
  DiscoverVersions: 0x1e,
  Encrypt: 0x1f,
  Decrypt: 0x20,
  Sign: 0x21,
  SignatureVerify: 0x22,
  MAC: 0x23,
  MACVerify: 0x24,
  RNGRetrieve: 0x25,
  RNGSeed: 0x26,
  Hash: 0x27,
  CreateSplitKey: 0x28,
  JoinSplitKey: 0x29,
  Import: 0x2a,
  Export: 0x2b,
} as const;

export const ObjectType = {
  Certificate: 0x01,
  SymmetricKey: 0x02,
  PublicKey: 0x03,
  PrivateKey: 0x04,
  SplitKey: 0x05,
  Template: 0x06,
  SecretData: 0x07,
  OpaqueObject: 0x08,
  PGPKey: 0x09,
  CertificateRequest: 0x0a,
} as const;

export const ResultStatus = {
  Success: 0x00,
  OperationFailed: 0x01,
  OperationPending: 0x02,
  OperationUndone: 0x03,
} as const;

export const ResultReason = {
  ItemNotFound: 0x01,
  ResponseTooLarge: 0x02,
  AuthenticationNotSuccessful: 0x03,
  InvalidMessage: 0x04,
  OperationNotSupported: 0x05,
  MissingData: 0x06,
  InvalidField: 0x07,
  FeatureNotSupported: 0x08,
  OperationCanceledByRequester: 0x09,
  CryptographicFailure: 0x0a,
  IllegalOperation: 0x0b,
  PermissionDenied: 0x0c,
  ObjectArchived: 0x0d,
  IndexOutOfBounds: 0x0e,
  ApplicationNamespaceNotSupported: 0x0f,
  KeyFormatTypeNotSupported: 0x10,
  KeyCompressionTypeNotSupported: 0x11,
  EncodingOptionError: 0x12,
  KeyValueNotPresent: 0x13,
  AttestationRequired: 0x14,
  AttestationFailed: 0x15,
  Sensitive: 0x16,
  NotExtractable: 0x17,
  ObjectAlreadyExists: 0x18,
  GeneralFailure: 0x100,
} as const;

export const State = {
  PreActive: 0x01,
  Active: 0x02,
  Deactivated: 0x03,
  Compromised: 0x04,
  Destroyed: 0x05,
  DestroyedCompromised: 0x06,
} as const;
export type KeyState = keyof typeof State;

export const CryptographicAlgorithm = {
  DES: 0x01,
  TripleDES: 0x02,
  AES: 0x03,
  RSA: 0x04,
} as const;

export const KeyFormatType = {
  Raw: 0x01,
  Opaque: 0x02,
  TransparentSymmetricKey: 0x07,
} as const;

/** Cryptographic Usage Mask bits. */
export const UsageMask = {
  Sign: 0x01,
  Verify: 0x02,
  Encrypt: 0x04,
  Decrypt: 0x08,
  WrapKey: 0x10,
  UnwrapKey: 0x20,
  Export: 0x40,
  MACGenerate: 0x80,
  MACVerify: 0x100,
  DeriveKey: 0x200,
} as const;

export const NameType = {
  UninterpretedTextString: 0x01,
  URI: 0x02,
} as const;

export const QueryFunction = {
  Operations: 0x01,
  Objects: 0x02,
  ServerInformation: 0x03,
} as const;

export const RevocationReasonCode = {
  Unspecified: 0x01,
  KeyCompromise: 0x02,
  CAcompromise: 0x03,
  AffiliationChanged: 0x04,
  Superseded: 0x05,
  CessationOfOperation: 0x06,
  PrivilegeWithdrawn: 0x07,
} as const;

export const CredentialType = {
  UsernameAndPassword: 0x01,
} as const;

/** Map a number back to its name in one of the tables above (for messages); unknown → "0x…". */
export function nameOf(table: Readonly<Record<string, number>>, value: number): string {
  for (const [name, v] of Object.entries(table)) if (v === value) return name;
  return `0x${value.toString(16).padStart(table === Tag ? 6 : 8, '0')}`;
}

export function tagName(tag: number): string {
  return nameOf(Tag, tag);
}
