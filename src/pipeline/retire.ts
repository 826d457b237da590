/**
 * After a deep rekey: retire the key-encryption keys the old DEK was locked with, so that an old copy
 * of the disk (or of its descriptor) no longer opens with them.
 *
 * A KEK is retired only when it was made for this disk alone: its provider records the disk id it was
 * created for (KeyProvider.keyOwner) and that id is the old disk id. Anything else — a batch's key,
 * one given with a key id, one whose provider cannot tell, one that still locks the new DEK — may
 * lock other disks and stays active, reported as kept with the reason. A failure to retire (KMS down)
 * does not undo a finished rekey: the key is reported as kept, with the error.
 */
import { describeKeySafe, type KeyCache, type KeyProvider, type KeyRef } from '../keys/index.js';
import type { EncryptionParams } from '../disk/for-pipeline.js';

export type KeptReason = 'still-used' | 'shared' | 'no-provider' | 'unsupported' | 'failed';

export interface KeyRotation {
  /** Old KEKs taken out of use (local: state retired; KMIP: revoked). */
  retired: KeyRef[];
  /** Old KEKs destroyed (destroyOldKeys). */
  destroyed: KeyRef[];
  /** Old KEKs left active, and why. */
  kept: Array<KeyRef & { reason: KeptReason; message: string }>;
}

export interface RetireOptions {
  /** Destroy instead of retire (KMIP: Revoke then Destroy); old backups then need `keys restore`. */
  destroy?: boolean;
  /** Forget retired keys here too: a cached KEK is used without asking its provider, State check included. */
  cache?: KeyCache;
}

/** The provider keys of a KeySafe, each once. */
function providerKeys(keySafe: string): KeyRef[] {
  const seen = new Map<string, KeyRef>();
  for (const l of describeKeySafe(keySafe)) {
    if (l.kind === 'provider' && l.providerId !== undefined && l.keyId !== undefined)
      seen.set(`${l.providerId}\0${l.keyId}`, { providerId: l.providerId, keyId: l.keyId });
  }
  return [...seen.values()];
}

/** Retire the KEKs of `from` (the disk before a deep rekey) that `to` no longer uses and that were made for it alone. */
export async function retireReplacedKeys(
  from: EncryptionParams,
  to: EncryptionParams,
  providers: readonly KeyProvider[],
  options: RetireOptions = {},
): Promise<KeyRotation> {
  const out: KeyRotation = { retired: [], destroyed: [], kept: [] };
  const still = new Set(providerKeys(to.keySafe).map((k) => `${k.providerId}\0${k.keyId}`));
  for (const ref of providerKeys(from.keySafe)) {
    const keep = (reason: KeptReason, message: string): void => void out.kept.push({ ...ref, reason, message });
    if (still.has(`${ref.providerId}\0${ref.keyId}`)) {
      keep('still-used', 'it also locks the new disk key');
      continue;
    }
    const provider = providers.find((p) => p.id === ref.providerId);
    if (!provider) {
      keep('no-provider', `provider '${ref.providerId}' was not given`);
      continue;
    }
    if (typeof provider.keyOwner !== 'function' || typeof provider.retireKey !== 'function') {
      keep('unsupported', `provider '${ref.providerId}' cannot tell which disk a key was made for`);
      continue;
    }
    try {
      const owner = await provider.keyOwner(ref.keyId);
      if (owner !== from.diskId) {
        keep('shared', owner === undefined ? 'a shared key (not made for this disk alone)' : `made for another disk (${owner})`);
        continue;
      }
      if (options.destroy) {
        await provider.destroyKey(ref.keyId);
        out.destroyed.push(ref);
      } else {
        await provider.retireKey(ref.keyId);
        out.retired.push(ref);
      }
      options.cache?.delete(provider, ref.keyId);
    } catch (err) {
      keep('failed', `could not be ${options.destroy ? 'destroyed' : 'retired'}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return out;
}
