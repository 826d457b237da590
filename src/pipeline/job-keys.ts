/**
 * Keys a copy job creates, and their removal when the job does not complete.
 *
 * A job that encrypts under a new KEK has the provider create it before any data is written. If the
 * job is then aborted, fails or is killed, that key locks nothing, yet it would stay in the keystore
 * or on the KMS for ever. So each new key is listed in the job's staging folder (`keys.json`, see
 * staging.ts) as soon as the provider returns it, and removed when the job does not commit: at once
 * on an abort or failure, or by the next job on the same output name when the process died. The
 * list is dropped with the staging folder only once every key in it is gone (or the commit started,
 * after which the keys lock the new disk).
 */
import type { KeyProvider, KeyRef } from '../keys/index.js';
import type { UnlockOptions } from './options.js';

/** The providers a job can reach: those of its unlock options, and those of its new lockers. */
export function jobProviders(keys: UnlockOptions | undefined, lockers: ReadonlyArray<{ kind: string; provider?: KeyProvider }> = []): KeyProvider[] {
  const given = keys?.providers;
  const out: KeyProvider[] = [...(Array.isArray(given) ? given : given ? Object.values(given) : [])];
  for (const l of lockers) if (l.kind === 'provider' && l.provider && !out.includes(l.provider)) out.push(l.provider);
  return out;
}

/**
 * Remove keys that lock nothing: `discardKey` where the provider has it (local keystore: the entry is
 * deleted), else `destroyKey` (KMIP: Revoke then Destroy). Returns the keys that could not be removed
 * (provider not given, or it failed), which must stay listed.
 */
export async function discardJobKeys(refs: readonly KeyRef[], providers: readonly KeyProvider[]): Promise<KeyRef[]> {
  const left: KeyRef[] = [];
  for (const ref of refs) {
    const provider = providers.find((p) => p.id === ref.providerId);
    try {
      if (!provider) throw new Error('provider not available');
      if (typeof provider.discardKey === 'function') await provider.discardKey(ref.keyId);
      else await provider.destroyKey(ref.keyId);
    } catch {
      left.push(ref);
    }
  }
  return left;
}
