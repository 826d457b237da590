/**
 * `backup rewrap REPO --remove-locker WHICH`: take a locker out of every KeySafe the repository's
 * manifests hold — after a KEK or passphrase leak, so that the points no longer carry a copy of the
 * DEK wrapped under the leaked secret.
 *
 * Each KeySafe is a list of pairs, each locking the same key dict on its own with its own MAC, and the
 * authenticator does not cover the KeySafe (docs/format.md): dropping a pair leaves every other pair
 * and the disk's identity lines valid. The rewrite still needs the keys: it is the key layer's
 * rewrapKeySafe, which opens the KeySafe first, so a KeySafe is only ever rewritten by someone who can
 * open it, and what remains is checked to open the same DEK (a KeySafe that is not this disk's, or
 * damaged, is refused before anything is written). The pairs kept are copied byte for byte.
 *
 * Every KeySafe text of every manifest is planned first (the merged layer's descriptor and, for a
 * chain point, each real layer's): a point whose KeySafe would be left with no locker stops the whole
 * command before any manifest is written (ERR_BACKUP_LAST_LOCKER). Then each changed manifest is
 * replaced atomically (temp file, fsync, rename, fsync of the folder). Under the exclusive repository
 * lock: no backup, restore or verify reads a manifest meanwhile. A run killed midway leaves each
 * manifest old or new; running it again finishes (points already rewritten have no such locker).
 * Chunks are untouched: the DEK and so the ciphertext stay — only a deep rekey changes them.
 */
import { describeKeySafe, rewrapKeySafe, type LockerInfo } from '../keys/index.js';
import { unsafeValueReason } from '../disk/for-pipeline.js';
import { Descriptor } from '../vmdk/index.js';
import { expected } from '../errors.js';
import { BackupError } from './errors.js';
import { serializeManifest, type PointManifest } from './manifest.js';
import { readPoints } from './points.js';
import { openRepository } from './repository.js';
import { entryOf, savePointIndex } from './point-index.js';
import type { RestoreKeys } from './restore-keys.js';

export interface RewrapBackupOptions {
  /**
   * The lockers to remove: `passphrase` (every passphrase locker), `provider` (every key-provider
   * locker), or one locker's id — a provider locker's key id, or a passphrase locker's id.
   */
  removeLocker: string;
  /** Opens each KeySafe (any remaining locker will do): unlock options, or a function given the KeySafe text. */
  keys: RestoreKeys;
  /** Wait this long for the exclusive repository lock (default: `0`). */
  lockWaitMs?: number;
}

export interface RewrapBackupResult {
  /** Points whose manifest was rewritten. */
  rewrittenPoints: string[];
  /** Points that carried no such locker (and plain points). */
  unchangedPoints: number;
}

const KEYSAFE = 'encryption.keySafe';

function arg(what: string, name: string, value: unknown): BackupError {
  return new BackupError('ERR_INVALID_ARGUMENT', expected(what, name, value));
}

/** Whether `l` is a locker `which` names. */
export function lockerMatches(l: LockerInfo, which: string): boolean {
  if (which === 'passphrase' || which === 'provider') return l.kind === which;
  return (l.kind === 'provider' && l.keyId === which) || (l.kind === 'passphrase' && l.id === which);
}

/** Every descriptor text of a point: the merged layer's, then each chain layer's. */
function descriptorTexts(m: PointManifest): string[] {
  return [...m.layers.map((l) => l.descriptor), ...(m.chain?.layers.map((l) => l.descriptor) ?? [])].filter((t): t is string => t !== null);
}

/** Remove the lockers `options.removeLocker` names from every point of the repository at `repoPath`. */
export async function rewrapBackup(repoPath: string, options: RewrapBackupOptions): Promise<RewrapBackupResult> {
  if (options === null || typeof options !== 'object') throw arg('an object', 'options', options);
  const which = options.removeLocker;
  if (typeof which !== 'string' || which === '' || which.length > 256) throw arg("'passphrase', 'provider' or a locker id", 'options.removeLocker', which);
  if (options.keys === null || (typeof options.keys !== 'object' && typeof options.keys !== 'function')) {
    throw arg('unlock options { passphrase?, providers?, cache? } (or a function of a KeySafe) to open the KeySafes', 'options.keys', options.keys);
  }
  const waitMs = options.lockWaitMs ?? 0;
  if (!Number.isSafeInteger(waitMs) || waitMs < 0) throw arg('a non-negative integer', 'options.lockWaitMs', waitMs);
  const repo = await openRepository(repoPath);
  const lock = await repo.lock('exclusive', 'rewrap', waitMs);
  try {
    const points = await readPoints(repo);
    // Plan: old KeySafe text → new one, for each text that carries such a locker.
    const planned = new Map<string, string>();
    const touched: PointManifest[] = [];
    for (const m of points) {
      let changes = false;
      for (const text of descriptorTexts(m)) {
        const keySafe = Descriptor.parse(text).get(KEYSAFE);
        if (keySafe === undefined) continue;
        if (planned.has(keySafe)) {
          changes = true;
          continue;
        }
        const lockers = describeKeySafe(keySafe);
        const removed = lockers.filter((l) => lockerMatches(l, which));
        if (removed.length === 0) continue;
        if (removed.length === lockers.length) {
          throw new BackupError(
            'ERR_BACKUP_LAST_LOCKER',
            `point ${m.id} is locked only by ${which === 'passphrase' || which === 'provider' ? `${which} lockers` : `locker ${which}`}: removing it would leave no way to open the point's key; add another locker to the disk and back it up again, or prune the point (nothing was changed)`,
          );
        }
        const unlock = typeof options.keys === 'function' ? await options.keys(keySafe) : options.keys;
        const next = await rewrapKeySafe(keySafe, { unlock, remove: (l) => lockerMatches(l, which) });
        const unsafe = unsafeValueReason(next);
        if (unsafe !== null)
          throw new BackupError('ERR_BACKUP_MANIFEST', `the rewrapped KeySafe of point ${m.id} cannot be written into a descriptor (${unsafe})`);
        planned.set(keySafe, next);
        changes = true;
      }
      if (changes) touched.push(m);
    }
    for (const m of touched) {
      const swap = (text: string): string => {
        const d = Descriptor.parse(text);
        const next = planned.get(d.get(KEYSAFE) ?? '');
        return next === undefined ? text : d.set(KEYSAFE, next).toString();
      };
      const rewritten: PointManifest = {
        ...m,
        layers: m.layers.map((l) => (l.descriptor === null ? l : { ...l, descriptor: swap(l.descriptor) })),
        ...(m.chain ? { chain: { ...m.chain, layers: m.chain.layers.map((l) => ({ ...l, descriptor: swap(l.descriptor) })) } } : {}),
      };
      await repo.writePointText(m.id, serializeManifest(rewritten));
    }
    // A rewrap changes no field the point index keeps; it is rewritten from the manifests read anyway.
    await savePointIndex(repo, points.map(entryOf));
    return { rewrittenPoints: touched.map((m) => m.id), unchangedPoints: points.length - touched.length };
  } finally {
    lock.release();
  }
}
