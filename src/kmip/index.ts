// Public surface of src/kmip: the KMIP key provider, the client under it, and the TTLV codec.
export { KmipError, type KmipErrorCode, type KmipNodeFailure } from './errors.js';
export { KmipKeyProvider, KEK_USAGE_MASK, type KmipKeyProviderOptions } from './provider.js';
export { KmipClient, type KmipClientOptions, type KmipClientStats, type KmipEndpoint, type KmipSymmetricKey } from './client.js';
export type { ProtocolVersion as KmipProtocolVersion, QueryResult as KmipQueryResult } from './messages.js';
export type { KeyState as KmipKeyState } from './tags.js';
export { TtlvWriter, decodeTtlv, encodeTtlv, type TtlvItem, type TtlvLimits } from './ttlv.js';
