/**
 * The encryption state of a disk made from, and checked against, its DEK: the glue between the
 * descriptor lines (params.ts) and the key layer (KeySafe, binding).
 */
import { randomBytes } from 'node:crypto';
import {
  computeAuthenticator,
  diskCipherOf,
  generateDek,
  sealDek,
  unlockKeySafe,
  verifyAuthenticator,
  type BindingParams,
  type KeyCache,
  type KeyRef,
  type LockerSpec,
  type SealOptions,
  type UnlockOptions,
} from '../keys/index.js';
import { DiskError } from './errors.js';
import { FORMAT_VERSION, KEY_BYTES, MAX_VALUE_LENGTH, unsafeValueReason, type CipherName, type DataUnitSize, type EncryptionParams } from './params.js';

export type { LockerSpec, UnlockOptions, KeyCache };

/** Re-sealing draws fresh IVs and salts; one seal is unusable with a chance below 1% (a "CID" somewhere in ~1000 characters), so 64 tries never fail in practice. */
const MAX_TRIES = 64;

export function bindingOf(
  p: Pick<EncryptionParams, 'formatVersion' | 'cipher' | 'unitSize' | 'diskId' | 'layerId' | 'parentLayerId'>,
  capacity: number,
): BindingParams {
  // The layer ids of a snapshot chain (version 3) are bound too, so that another layer slipped under
  // a child (an older snapshot of the same disk, same DEK) is refused.
  const extra: Record<string, string> = { formatVersion: String(p.formatVersion) };
  if (p.layerId !== undefined) extra.layerId = p.layerId;
  if (p.parentLayerId !== undefined) extra.parentLayerId = p.parentLayerId;
  return { cipher: p.cipher, dataUnitSize: p.unitSize, capacity, diskId: p.diskId, extra };
}

export { generateDek };

/**
 * Seal `dek` under `lockers` and bind it to a fresh disk identity. The KeySafe is re-sealed (fresh
 * IVs) until its text is safe in a descriptor (no `CID`, … by chance), the disk id re-drawn until
 * the authenticator is.
 */
export async function makeEncryptionParams(
  dek: Buffer,
  opts: { cipher: CipherName; unitSize: DataUnitSize; capacity: number; lockers: LockerSpec[]; cache?: KeyCache; onKeyCreated?: SealOptions['onKeyCreated'] },
): Promise<EncryptionParams> {
  // The disk identity first (the authenticator does not cover the KeySafe), so that a KEK made while
  // sealing is recorded as this disk's own, which lets a later deep rekey retire it.
  const identity = rebind(dek, { formatVersion: FORMAT_VERSION, cipher: opts.cipher, unitSize: opts.unitSize, keySafe: '' }, opts.capacity);
  let keySafe: string | undefined;
  let lockers = opts.lockers;
  for (let i = 0; i < MAX_TRIES && keySafe === undefined; i++) {
    const created: KeyRef[] = [];
    const text = await sealDek(dek, {
      cipher: opts.cipher,
      lockers,
      diskId: identity.diskId,
      ...(opts.cache ? { cache: opts.cache } : {}),
      onKeyCreated: async (ref) => {
        created.push(ref);
        await opts.onKeyCreated?.(ref);
      },
    });
    // A re-seal (unsafe text) reuses the KEKs this seal made instead of making new ones each time.
    lockers = reuseCreatedKeys(lockers, created);
    if (text.length > MAX_VALUE_LENGTH) {
      throw new DiskError(
        'ERR_ENCRYPTION_METADATA',
        `the KeySafe of ${opts.lockers.length} lockers is ${text.length} characters, more than a descriptor value may hold (${MAX_VALUE_LENGTH}); use fewer lockers`,
      );
    }
    if (unsafeValueReason(text) === null) keySafe = text;
  }
  if (keySafe === undefined) {
    throw new DiskError(
      'ERR_ENCRYPTION_METADATA',
      `the KeySafe cannot be written into a descriptor (too long for ${opts.lockers.length} lockers, or unsafe text after ${MAX_TRIES} seals)`,
    );
  }
  return { ...identity, keySafe };
}

/** The lockers with each "new KEK" provider locker bound to the key a seal made for it (sealDek creates them in order). */
export function reuseCreatedKeys(lockers: LockerSpec[], created: readonly KeyRef[]): LockerSpec[] {
  let next = 0;
  return lockers.map((l) => (l.kind === 'provider' && l.keyId === undefined && next < created.length ? { ...l, keyId: created[next++]!.keyId } : l));
}

/** Same DEK and KeySafe, a new disk identity and authenticator (a copy of an encrypted disk is a new disk). */
export function rebind(dek: Buffer, p: Pick<EncryptionParams, 'formatVersion' | 'cipher' | 'unitSize' | 'keySafe'>, capacity: number): EncryptionParams {
  for (let i = 0; i < MAX_TRIES; i++) {
    const diskId = randomBytes(16).toString('hex');
    const authenticator = computeAuthenticator(dek, bindingOf({ ...p, diskId }, capacity));
    if (unsafeValueReason(authenticator) === null) return { ...p, diskId, authenticator };
  }
  throw new DiskError('ERR_ENCRYPTION_METADATA', 'could not make a descriptor-safe authenticator');
}

/**
 * Unlock the KeySafe of `params` and check the authenticator against the DEK, the parameters and
 * `capacity` — before any data is decrypted. Returns the DEK (the caller wipes it).
 * Errors: the key layer's ERR_WRONG_KEY / ERR_DISK_LOCKED / ERR_NO_KEY / ERR_KEYSAFE, ERR_BINDING
 * (a parameter, the capacity or the KeySafe was changed or swapped), ERR_ENCRYPTION_METADATA.
 */
export async function unlockDek(params: EncryptionParams, capacity: number, keys: UnlockOptions, where: string): Promise<Buffer> {
  const unlocked = await unlockKeySafe(params.keySafe, keys);
  const key = unlocked.key;
  try {
    const cipher = diskCipherOf(unlocked.cipher);
    if (cipher !== params.cipher || key.length !== KEY_BYTES[params.cipher]) {
      throw new DiskError(
        'ERR_ENCRYPTION_METADATA',
        `the KeySafe of ${where} holds a ${unlocked.cipher} key of ${key.length} bytes, but encryption.cipher says ${params.cipher}`,
      );
    }
    verifyAuthenticator(key, bindingOf(params, capacity), params.authenticator);
    return key;
  } catch (err) {
    key.fill(0);
    throw err;
  }
}
