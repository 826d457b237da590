// Public surface of the key layer (src/keys): DEKs, KeySafe strings, lockers, binding, providers, cache.
export { KeyError, KeySafeError } from './errors.js';
export type { KeyErrorCode, KeySafeReason, UnlockAttempt } from './errors.js';
export { generateDek, wipe, dekLength, dictCipherName, diskCipherOf, DICT_CIPHER_KEY_BYTES } from './dek.js';
export type { DiskCipher } from './dek.js';
export { KeySafe, KEYSAFE_LIMITS, MAC_BYTES, ETM_MAC_NAME } from './keysafe.js';
export type { KeyLocator, NullLocator, RawKeyLocator, PhraseLocator, FqidLocator, OpaqueLocator, ListLocator, PairLocator, MacName } from './keysafe.js';
export type { Field } from './escape.js';
export { PHRASE_DEFAULTS, KDF_LIMITS } from './kdf.js';
export type { PhraseKdf, PassphraseKdfChoice, Pass2KeyName } from './kdf.js';
export { sealDek, unlockKeySafe, rewrapKeySafe, describeKeySafe } from './envelope.js';
export type { LockerSpec, SealOptions, UnlockOptions, UnlockResult, UnlockedBy, LockerInfo, RewrapOptions, ProviderSet } from './envelope.js';
export { computeAuthenticator, verifyAuthenticator, encodeBindingParams } from './binding.js';
export type { BindingParams } from './binding.js';
export { KeyCache } from './cache.js';
export type { KeyCacheOptions } from './cache.js';
export { LocalKeyProvider, LOCAL_PROVIDER_DEFAULTS } from './local-provider.js';
export type { LocalKeyProviderOptions, LocalKeyInfo } from './local-provider.js';
export type { CreateKeyOptions, KeyProvider, KeyRef } from './provider.js';
