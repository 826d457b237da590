import { randomBytes } from 'node:crypto';
import { VmsealError, describeValue, expected, expectedOneOf } from '../errors.js';
import { KeyError, invalidArgument, type UnlockAttempt } from './errors.js';
import { DICT_CIPHER_KEY_BYTES, DISK_CIPHERS, dictCipherName, type DiskCipher } from './dek.js';
import { parseKeyDict, serializeKeyDict } from './dict.js';
import { checkKdf, deriveKek, kdfSummary, KDF_LIMITS, PHRASE_DEFAULTS, type Pass2KeyName, type PassphraseKdfChoice, type PhraseKdf } from './kdf.js';
import {
  ETM_MAC_NAME,
  KeySafe,
  KEYSAFE_LIMITS,
  makeFqidLocator,
  makeList,
  makePair,
  makePhraseLocator,
  type KeyLocator,
  type MacName,
  type PairLocator,
} from './keysafe.js';
import { lockDict, unlockDict, type RandomSource } from './locked-data.js';
import type { KeyCache } from './cache.js';
import type { KeyProvider, KeyRef } from './provider.js';

/**
 * The envelope: a DEK (as VMware's key dict `type=key:cipher=…:key=…`) locked by one or more lockers in a
 * KeySafe `vmware:key/list/(pair/(LOCKER,MAC,LOCKED),…)`. Each pair opens the same DEK independently.
 */

/** How one new locker gets its KEK. */
export type LockerSpec =
  | {
      kind: 'provider';
      provider: KeyProvider;
      /** Wrap under this existing KEK; when absent a new KEK is created (needs the provider reachable). */
      keyId?: string;
      /** Name for a newly created KEK (default: none). */
      name?: string;
    }
  | {
      kind: 'passphrase';
      passphrase: string | Uint8Array;
      /** KDF (default: 'pbkdf2-sha256'); 'workstation' writes VMware Workstation's PBKDF2-HMAC-SHA-1 locker. */
      kdf?: PassphraseKdfChoice;
      /** PBKDF2 rounds (default: 600,000 for pbkdf2-sha256, 10,000 for workstation). Lower only in tests. */
      rounds?: number;
      /** scrypt cost (default: n 131072, r 8, p 1). Lower only in tests. */
      scrypt?: { n: number; r: number; p: number };
    };

export interface SealOptions {
  /** Data cipher: 'aes-256-xts' / 'aes-128-xts', or a VMware dict cipher name such as 'XTS-AES-256' or 'AES-256'. */
  cipher: DiskCipher | string;
  lockers: LockerSpec[];
  /** KEKs fetched or created for provider lockers are stored here. */
  cache?: KeyCache;
  /** The disk the DEK belongs to: new KEKs are created for it alone (recorded with the key, see KeyProvider). */
  diskId?: string;
  /**
   * Called as soon as a provider has created a new KEK, before it is used, so that a job can list the
   * keys it made and remove them if it does not complete. If it throws, the seal fails.
   */
  onKeyCreated?: (ref: KeyRef) => void | Promise<void>;
}

export type ProviderSet = KeyProvider[] | Record<string, KeyProvider>;

export interface UnlockOptions {
  passphrase?: string | Uint8Array;
  /** Providers by id: an array (matched on `provider.id`) or a record keyed by provider id. */
  providers?: ProviderSet;
  /** Consulted first for provider lockers; KEKs fetched from providers are stored in it. */
  cache?: KeyCache;
}

export type UnlockedBy =
  | { kind: 'provider'; index: number; providerId: string; keyId: string; fromCache: boolean }
  | { kind: 'passphrase'; index: number; id: string; kdf: Pass2KeyName };

export interface UnlockResult {
  /** The dict's type: always 'key'. */
  type: string;
  /** The dict's cipher name, e.g. 'XTS-AES-256' (vmseal DEKs) or 'AES-256' (Workstation config keys). */
  cipher: string;
  /** The unlocked key; the caller owns it and wipes it when done. */
  key: Buffer;
  unlockedBy: UnlockedBy;
}

/** One locker of a KeySafe, without secrets (for `vmseal info`). */
export interface LockerInfo {
  /** Index of the pair among the KeySafe's list elements. */
  index: number;
  kind: 'provider' | 'passphrase' | 'unsupported';
  /** The locker's type name: fqid, phrase, ldap, script, role, null, rawkey. */
  lockerType: string;
  providerId?: string;
  keyId?: string;
  /** A phrase locker's id. */
  id?: string;
  mac: MacName;
  kdf?: { name: Pass2KeyName; rounds?: number; n?: number; r?: number; p?: number };
}

const KEK_BYTES = 32;

function passBytes(p: unknown, name: string): Buffer {
  if (typeof p === 'string' && p.length > 0) return Buffer.from(p, 'utf8');
  if (p instanceof Uint8Array && p.length > 0) return Buffer.from(p);
  throw invalidArgument(expected('a non-empty string or Buffer', name, p));
}

function dictCipherOf(cipher: unknown): string {
  if ((DISK_CIPHERS as readonly unknown[]).includes(cipher)) return dictCipherName(cipher as DiskCipher);
  if (typeof cipher === 'string' && DICT_CIPHER_KEY_BYTES[cipher] !== undefined) return cipher;
  throw invalidArgument(expectedOneOf([...DISK_CIPHERS, ...Object.keys(DICT_CIPHER_KEY_BYTES)], 'cipher', cipher));
}

function checkKek(kek: unknown, providerId: string, keyId: string): Buffer {
  if (!Buffer.isBuffer(kek) || kek.length !== KEK_BYTES) {
    if (Buffer.isBuffer(kek)) kek.fill(0);
    throw new KeyError('ERR_KEY_PROVIDER', `key provider '${providerId}' returned ${describeValue(kek)} for key '${keyId}'; expected a 32-byte Buffer`, {
      providerId,
      keyId,
    });
  }
  return kek;
}

function providerError(err: unknown, providerId: string, action: string): VmsealError {
  if (err instanceof VmsealError) return err;
  return new KeyError('ERR_KEY_PROVIDER', `key provider '${providerId}' failed to ${action}: ${err instanceof Error ? err.message : String(err)}`, {
    providerId,
    cause: err,
  });
}

/**
 * Fetch a KEK: this provider instance's cache entry first, then the provider (storing it in the cache
 * for this instance only). Without a provider instance the cache is not consulted: a cached KEK is
 * only ever handed back to the instance (and so the credentials) that fetched it.
 */
async function fetchKek(
  provider: KeyProvider | undefined,
  providerId: string,
  keyId: string,
  cache: KeyCache | undefined,
): Promise<{ kek: Buffer; fromCache: boolean }> {
  if (!provider) {
    throw new KeyError('ERR_DISK_LOCKED', `no key provider '${providerId}' was given for key '${keyId}'`, { providerId, keyId });
  }
  const cached = cache?.get(provider, keyId);
  if (cached) return { kek: cached, fromCache: true };
  const kek = checkKek(await provider.getKey(keyId), providerId, keyId);
  cache?.set(provider, keyId, kek);
  return { kek, fromCache: false };
}

function newPhraseKdf(spec: Extract<LockerSpec, { kind: 'passphrase' }>, random: RandomSource): { kdf: PhraseKdf; mac: MacName } {
  const choice = spec.kdf ?? PHRASE_DEFAULTS.kdf;
  const salt = random(PHRASE_DEFAULTS.saltBytes);
  let kdf: PhraseKdf;
  if (choice === 'scrypt') {
    const s = spec.scrypt ?? PHRASE_DEFAULTS.scrypt;
    if (s === null || typeof s !== 'object') throw invalidArgument(expected('{ n, r, p }', 'scrypt', s));
    kdf = { name: 'SCRYPT', n: s.n, r: s.r, p: s.p, salt };
  } else if (choice === 'pbkdf2-sha256' || choice === 'workstation') {
    const rounds = spec.rounds ?? (choice === 'workstation' ? PHRASE_DEFAULTS.workstationRounds : PHRASE_DEFAULTS.pbkdf2Sha256Rounds);
    kdf = { name: choice === 'workstation' ? 'PBKDF2-HMAC-SHA-1' : 'PBKDF2-HMAC-SHA-256', rounds, salt };
  } else {
    throw invalidArgument(expectedOneOf(['pbkdf2-sha256', 'scrypt', 'workstation'], 'kdf', choice));
  }
  checkKdf(kdf, -1);
  return { kdf, mac: choice === 'workstation' ? 'HMAC-SHA-1' : 'HMAC-SHA-256' };
}

/** Lock an already built key dict under one new locker. */
async function lockWithSpec(
  dict: Buffer,
  spec: LockerSpec,
  cache: KeyCache | undefined,
  diskId: string | undefined,
  onKeyCreated?: (ref: KeyRef) => void | Promise<void>,
  random: RandomSource = randomBytes,
): Promise<PairLocator> {
  if (spec === null || typeof spec !== 'object') throw invalidArgument(expected('an object', 'a locker spec', spec));
  if (spec.kind === 'provider') {
    const provider = spec.provider;
    if (!provider || typeof provider.getKey !== 'function' || typeof provider.id !== 'string' || provider.id === '') {
      throw invalidArgument(expected('a KeyProvider', 'the provider of a provider locker', provider));
    }
    const providerId = provider.id;
    let keyId = spec.keyId;
    let kek: Buffer;
    if (keyId === undefined) {
      let ref;
      try {
        ref = await provider.createKey({ ...(spec.name !== undefined ? { name: spec.name } : {}), ...(diskId !== undefined ? { diskId } : {}) });
      } catch (err) {
        throw providerError(err, providerId, 'create a new key');
      }
      if (ref === null || typeof ref !== 'object' || ref.providerId !== providerId || typeof ref.keyId !== 'string' || ref.keyId === '') {
        throw new KeyError(
          'ERR_KEY_PROVIDER',
          `key provider '${providerId}' returned a bad key reference from createKey (expected { providerId: '${providerId}', keyId: non-empty string })`,
          {
            providerId,
          },
        );
      }
      keyId = ref.keyId;
      await onKeyCreated?.({ providerId, keyId });
      try {
        kek = (await fetchKek(provider, providerId, keyId, cache)).kek;
      } catch (err) {
        throw providerError(err, providerId, `fetch the new key '${keyId}'`);
      }
    } else {
      if (typeof keyId !== 'string' || keyId === '') throw invalidArgument(expected('a non-empty string', 'keyId', keyId));
      try {
        kek = (await fetchKek(provider, providerId, keyId, cache)).kek;
      } catch (err) {
        throw providerError(err, providerId, `fetch key '${keyId}'`);
      }
    }
    try {
      // vmseal's own provider lockers: encrypt-then-MAC (old HMAC-SHA-256 ones are still read).
      return makePair(makeFqidLocator(providerId, keyId), ETM_MAC_NAME, lockDict(kek, ETM_MAC_NAME, dict, random));
    } finally {
      kek.fill(0);
    }
  }
  if (spec.kind === 'passphrase') {
    const pass = passBytes(spec.passphrase, 'passphrase');
    try {
      const { kdf, mac } = newPhraseKdf(spec, random);
      const kek = await deriveKek(pass, kdf);
      try {
        const id = random(8).toString('base64');
        return makePair(makePhraseLocator(id, kdf), mac, lockDict(kek, mac, dict, random));
      } finally {
        kek.fill(0);
      }
    } finally {
      pass.fill(0);
    }
  }
  throw invalidArgument(expectedOneOf(['provider', 'passphrase'], 'the kind of a locker spec', (spec as { kind?: unknown }).kind));
}

/**
 * Lock a DEK under every locker of `lockers` and return the KeySafe text
 * `vmware:key/list/(pair/(…),…)`. Each call uses fresh IVs and salts, so sealing twice gives different text.
 */
export async function sealDek(dek: Buffer, options: SealOptions): Promise<string> {
  return sealDekWith(dek, options, randomBytes);
}

/**
 * sealDek with the random source of every salt, phrase id and IV given: the .vmx writer's test-only
 * option uses it to compute a KeySafe's exact bytes independently. Not exported from the package.
 */
export async function sealDekWith(dek: Buffer, options: SealOptions, random: RandomSource): Promise<string> {
  if (options === null || typeof options !== 'object') throw invalidArgument(expected('an object', 'options', options));
  const cipher = dictCipherOf(options.cipher);
  if (!Buffer.isBuffer(dek) || dek.length !== DICT_CIPHER_KEY_BYTES[cipher]) {
    throw invalidArgument(expected(`a Buffer of ${DICT_CIPHER_KEY_BYTES[cipher]} bytes (${cipher})`, 'dek', dek));
  }
  const { lockers } = options;
  if (!Array.isArray(lockers) || lockers.length === 0 || lockers.length > KEYSAFE_LIMITS.maxListItems) {
    throw invalidArgument(expected(`an array of 1 to ${KEYSAFE_LIMITS.maxListItems} locker specs`, 'lockers', lockers));
  }
  const dict = serializeKeyDict(cipher, dek);
  try {
    const pairs: PairLocator[] = [];
    for (const spec of lockers) pairs.push(await lockWithSpec(dict, spec, options.cache, options.diskId, options.onKeyCreated, random));
    return KeySafe.from(makeList(pairs)).toString();
  } finally {
    dict.fill(0);
  }
}

function providerMap(providers: unknown): Map<string, KeyProvider> {
  const map = new Map<string, KeyProvider>();
  if (providers === undefined) return map;
  if (Array.isArray(providers)) {
    for (const p of providers) {
      if (!p || typeof p.id !== 'string' || typeof p.getKey !== 'function') {
        throw invalidArgument(expected('KeyProvider objects', 'the items of providers', p));
      }
      if (!map.has(p.id)) map.set(p.id, p);
    }
    return map;
  }
  if (providers !== null && typeof providers === 'object') {
    for (const [id, p] of Object.entries(providers as Record<string, KeyProvider>)) {
      if (!p || typeof p.getKey !== 'function') throw invalidArgument(expected('a KeyProvider', `providers['${id}']`, p));
      map.set(id, p);
    }
    return map;
  }
  throw invalidArgument(expected('an array or a record of key providers', 'providers', providers));
}

function parseText(text: unknown): KeySafe {
  if (typeof text !== 'string') throw invalidArgument(expected('a string', 'the KeySafe text', text));
  return KeySafe.parse(text);
}

/** Pairs with their index among the root list's elements (a bare pair is index 0). */
function indexedPairs(ks: KeySafe): Array<{ index: number; pair: PairLocator }> {
  if (ks.root.type === 'pair') return [{ index: 0, pair: ks.root }];
  if (ks.root.type === 'list') {
    return ks.root.items.flatMap((item, index) => (item.type === 'pair' ? [{ index, pair: item }] : []));
  }
  return [];
}

function describePair(index: number, pair: PairLocator): LockerInfo {
  const l = pair.locker;
  if (l.type === 'fqid') {
    return { index, kind: 'provider', lockerType: 'fqid', providerId: l.keyServerId.value!, keyId: l.keyId.value!, mac: pair.macName };
  }
  if (l.type === 'phrase') {
    return { index, kind: 'passphrase', lockerType: 'phrase', id: l.id.value!, mac: pair.macName, kdf: kdfSummary(l.kdf!) };
  }
  return { index, kind: 'unsupported', lockerType: l.type, mac: pair.macName };
}

/** The lockers of a KeySafe, without secrets. Throws ERR_KEYSAFE for malformed text. */
export function describeKeySafe(text: string): LockerInfo[] {
  return indexedPairs(parseText(text)).map(({ index, pair }) => describePair(index, pair));
}

/** Open the dict of one pair with a KEK, or undefined on MAC failure. */
function openPair(pair: PairLocator, kek: Buffer): Buffer | undefined {
  return unlockDict(kek, pair.macName, pair.locked);
}

function finish(dictBytes: Buffer, unlockedBy: UnlockedBy): UnlockResult {
  try {
    const d = parseKeyDict(dictBytes);
    return { type: d.type, cipher: d.cipher, key: d.key, unlockedBy };
  } finally {
    dictBytes.fill(0);
  }
}

function errorCode(err: unknown): string {
  return err instanceof VmsealError ? err.code : 'ERR_KEY_PROVIDER';
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Unlock a KeySafe: try every pair that the given means can open — cached KEKs first, then the
 * passphrase on every phrase locker, then the providers — and return the first dict that opens.
 *
 * Errors (KeyError): ERR_KEYSAFE for malformed text; ERR_WRONG_KEY if some locker was tried and its MAC
 * failed (wrong passphrase or KEK, or modified data); else ERR_DISK_LOCKED (with providerId/keyId of the
 * first needed key) if a provider locker could not get its KEK (provider down, key gone, not cached);
 * else ERR_NO_KEY if nothing applicable was given. `attempts` lists every locker tried.
 */
export async function unlockKeySafe(text: string, options: UnlockOptions = {}): Promise<UnlockResult> {
  if (options === null || typeof options !== 'object') throw invalidArgument(expected('an object', 'options', options));
  const ks = parseText(text);
  const pairs = indexedPairs(ks);
  if (pairs.length === 0) {
    throw new KeyError('ERR_UNSUPPORTED_LOCKER', `the KeySafe is a bare '${ks.root.type}' locator, not a pair or a list of pairs: it holds no locked key`);
  }
  const providers = providerMap(options.providers);
  const cache = options.cache;
  const pass = options.passphrase === undefined ? undefined : passBytes(options.passphrase, 'passphrase');
  const attempts: UnlockAttempt[] = [];
  const fqids = pairs.filter((p) => p.pair.locker.type === 'fqid');
  const triedFromCache = new Set<number>();
  try {
    // 1. Cached KEKs: no provider round trip, works with every provider down.
    if (cache) {
      for (const { index, pair } of fqids) {
        const l = pair.locker as Extract<KeyLocator, { type: 'fqid' }>;
        const providerId = l.keyServerId.value!;
        const keyId = l.keyId.value!;
        const provider = providers.get(providerId);
        if (!provider) continue; // entries belong to provider instances: none given, nothing to look up
        const kek = cache.get(provider, keyId);
        if (!kek) continue;
        triedFromCache.add(index);
        const dict = openPair(pair, kek);
        kek.fill(0);
        if (dict) return finish(dict, { kind: 'provider', index, providerId, keyId, fromCache: true });
        attempts.push({
          index,
          kind: 'provider',
          providerId,
          keyId,
          code: 'ERR_WRONG_KEY',
          message: `the cached KEK '${keyId}' of provider '${providerId}' does not open this locker`,
        });
      }
    }
    // 2. The passphrase, on every phrase locker (each has its own salt and KDF).
    if (pass) {
      let tried = 0;
      for (const { index, pair } of pairs) {
        const l = pair.locker;
        if (l.type !== 'phrase') continue;
        if (++tried > KDF_LIMITS.maxPhraseLockersTried) {
          attempts.push({
            index,
            kind: 'passphrase',
            code: 'ERR_NO_KEY',
            message: `not tried: only the first ${KDF_LIMITS.maxPhraseLockersTried} phrase lockers are tried`,
          });
          continue;
        }
        const kek = await deriveKek(pass, l.kdf!);
        const dict = openPair(pair, kek);
        kek.fill(0);
        if (dict) return finish(dict, { kind: 'passphrase', index, id: l.id.value!, kdf: l.kdf!.name });
        attempts.push({ index, kind: 'passphrase', code: 'ERR_WRONG_KEY', message: `the passphrase does not open phrase locker ${index}` });
      }
    }
    // 3. Providers (a KMS may be slow or down: last).
    for (const { index, pair } of fqids) {
      if (triedFromCache.has(index)) continue;
      const l = pair.locker as Extract<KeyLocator, { type: 'fqid' }>;
      const providerId = l.keyServerId.value!;
      const keyId = l.keyId.value!;
      const provider = providers.get(providerId);
      if (!provider && !cache) continue; // nothing applicable for this locker
      let kek: Buffer;
      try {
        kek = (await fetchKek(provider, providerId, keyId, cache)).kek;
      } catch (err) {
        attempts.push({
          index,
          kind: 'provider',
          providerId,
          keyId,
          code: errorCode(err),
          message: errorText(err),
        });
        continue;
      }
      const dict = openPair(pair, kek);
      kek.fill(0);
      if (dict) return finish(dict, { kind: 'provider', index, providerId, keyId, fromCache: false });
      attempts.push({
        index,
        kind: 'provider',
        providerId,
        keyId,
        code: 'ERR_WRONG_KEY',
        message: `key '${keyId}' of provider '${providerId}' does not open this locker`,
      });
    }
  } finally {
    pass?.fill(0);
  }
  for (const { index, pair } of pairs) {
    const t = pair.locker.type;
    if (t !== 'fqid' && t !== 'phrase') {
      attempts.push({ index, kind: 'unsupported', code: 'ERR_UNSUPPORTED_LOCKER', message: `vmseal cannot open '${t}' lockers` });
    }
  }
  throw unlockFailure(pairs, attempts, options.passphrase !== undefined);
}

function unlockFailure(pairs: Array<{ index: number; pair: PairLocator }>, attempts: UnlockAttempt[], hadPassphrase: boolean): KeyError {
  const summary = attempts.map((a) => `locker ${a.index}: ${a.message}`).join('; ');
  const wrong = attempts.filter((a) => a.code === 'ERR_WRONG_KEY');
  if (wrong.length > 0) {
    const what = wrong.some((a) => a.kind === 'passphrase') ? 'wrong passphrase' : 'wrong key';
    return new KeyError('ERR_WRONG_KEY', `${what}, or the locked data was modified (${summary})`, { attempts });
  }
  // A retired KEK means an old copy of the disk (or of its descriptor): say so rather than "locked",
  // which would send the user looking for a KMS outage.
  const retired = attempts.filter((a) => a.code === 'ERR_KEY_RETIRED');
  if (retired.length > 0) {
    const first = retired[0]!;
    return new KeyError(
      'ERR_KEY_RETIRED',
      `the disk's key-encryption key was retired by a deep rekey, so this is an old copy of the disk or of its descriptor (${summary})`,
      {
        providerId: first.providerId!,
        keyId: first.keyId!,
        attempts,
      },
    );
  }
  const locked = attempts.filter((a) => a.kind === 'provider');
  if (locked.length > 0) {
    const first = locked[0]!;
    const needed = locked.map((a) => `key '${a.keyId}' of provider '${a.providerId}'`).join(', ');
    return new KeyError('ERR_DISK_LOCKED', `the disk is locked: ${needed} cannot be fetched (${summary})`, {
      providerId: first.providerId!,
      keyId: first.keyId!,
      attempts,
    });
  }
  const needs: string[] = [];
  const fq = pairs.filter((p) => p.pair.locker.type === 'fqid').map((p) => describePair(p.index, p.pair));
  if (fq.length) needs.push(`a key provider (${fq.map((i) => `'${i.providerId}' for key '${i.keyId}'`).join(', ')})`);
  if (!hadPassphrase && pairs.some((p) => p.pair.locker.type === 'phrase')) needs.push('a passphrase');
  const unsupported = attempts.filter((a) => a.kind === 'unsupported');
  if (needs.length === 0 && unsupported.length > 0) {
    return new KeyError('ERR_UNSUPPORTED_LOCKER', `no locker of this KeySafe can be opened by vmseal (${summary})`, { attempts });
  }
  return new KeyError('ERR_NO_KEY', `nothing given can open this KeySafe; it needs ${needs.join(' or ')}${summary ? ` (${summary})` : ''}`, { attempts });
}

export interface RewrapOptions {
  /** How to open the KeySafe first (same as unlockKeySafe). */
  unlock: UnlockOptions;
  /** New lockers for the same DEK. */
  add?: LockerSpec[];
  /** Return true for each existing locker to drop. */
  remove?: (locker: LockerInfo) => boolean;
  /** Cache for KEKs of the new provider lockers (default: unlock.cache). */
  cache?: KeyCache;
  /** The disk the DEK belongs to: new KEKs are created for it alone (see SealOptions.diskId). */
  diskId?: string;
  /** Called as soon as a provider has created a new KEK (see SealOptions.onKeyCreated). */
  onKeyCreated?: (ref: KeyRef) => void | Promise<void>;
}

/**
 * Shallow rekey: the same DEK under a changed set of lockers. Unlocks with `unlock`, keeps every existing
 * list element the `remove` callback does not drop (byte for byte), appends new pairs for `add` (fresh IVs),
 * and returns the new KeySafe text. Refuses (ERR_INVALID_ARGUMENT) to leave no pair.
 */
export async function rewrapKeySafe(text: string, options: RewrapOptions): Promise<string> {
  if (options === null || typeof options !== 'object') throw invalidArgument(expected('an object', 'options', options));
  const { add = [], remove } = options;
  if (!Array.isArray(add)) throw invalidArgument(expected('an array', 'add', add));
  const existing = KeySafe.parse(text);
  const existingItems = existing.root.type === 'list' ? existing.root.items.length : 1;
  if (existingItems + add.length > KEYSAFE_LIMITS.maxListItems) {
    throw invalidArgument(`the rewrapped KeySafe would have more than ${KEYSAFE_LIMITS.maxListItems} lockers`);
  }
  if (remove !== undefined && typeof remove !== 'function') throw invalidArgument(expected('a function', 'remove', remove));
  const unlocked = await unlockKeySafe(text, options.unlock);
  const dict = serializeKeyDict(unlocked.cipher, unlocked.key);
  unlocked.key.fill(0);
  try {
    const ks = KeySafe.parse(text);
    const items: readonly KeyLocator[] = ks.root.type === 'list' ? ks.root.items : [ks.root];
    const kept = items.filter((item, index) => item.type !== 'pair' || !remove?.(describePair(index, item)));
    const added: PairLocator[] = [];
    for (const spec of add) added.push(await lockWithSpec(dict, spec, options.cache ?? options.unlock.cache, options.diskId, options.onKeyCreated));
    const all = [...kept, ...added];
    if (!all.some((i) => i.type === 'pair')) throw invalidArgument('the rewrap would leave the KeySafe with no locker');
    return KeySafe.from(makeList(all)).toString();
  } finally {
    dict.fill(0);
  }
}
