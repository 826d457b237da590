/**
 * The keys of a disk restored at another site (`backup restore … --rewrap-to`, `--new-dek`): the
 * staged disk, complete with the point's ciphertext and KeySafe, is rekeyed in its staging folder
 * before it is moved into place, by the pipeline's own jobs — nothing here touches a key itself.
 *
 * - rewrap only: a shallow rekey (shallowRekey). The DEK is unlocked with the point's lockers (the
 *   source site's key provider, or a recovery passphrase) and sealed for the new lockers alone,
 *   which replace every old one: the restored disk no longer opens with the source's provider.
 *   The data and the disk identity stay (the authenticator binds the DEK to the parameters and the
 *   disk id, not to the KeySafe), so the restored disk's chunks are the point's.
 * - new DEK: a deep rekey (deepRekey, copy mode, in the staging folder). Every chunk changes. Its
 *   lockers are the new ones if given, else a new KEK of each provider the point's lockers name.
 *   The old KEKs are never retired: they still lock the source disk and its other points.
 */
import { deepRekey, shallowRekey } from '../pipeline/index.js';
import type { KeyCache, LockerSpec, UnlockOptions } from '../keys/index.js';

/** Unlocks a point's KeySafe: unlock options, or a function given the KeySafe text (to pick the providers it names). */
export type RestoreKeys = UnlockOptions | ((keySafe: string) => UnlockOptions | Promise<UnlockOptions>);

export interface RestoreRekey {
  keys: RestoreKeys;
  rewrapTo: LockerSpec[] | undefined;
  newDek: boolean;
  cache: KeyCache | undefined;
  signal: AbortSignal | undefined;
}

/** Rekey the staged disk `staged` (whose KeySafe is `keySafe`, the point's) as `r` asks. */
export async function rekeyRestored(staged: string, keySafe: string, r: RestoreRekey): Promise<void> {
  const unlock = typeof r.keys === 'function' ? await r.keys(keySafe) : r.keys;
  const cache = r.cache ? { cache: r.cache } : {};
  if (r.newDek) {
    await deepRekey(staged, {
      keys: unlock,
      ...(r.rewrapTo ? { lockers: r.rewrapTo } : {}),
      retireOldKeys: false,
      ...cache,
      ...(r.signal ? { signal: r.signal } : {}),
    });
    return;
  }
  await shallowRekey(staged, { keys: unlock, lockers: r.rewrapTo!, ...cache });
}
