/**
 * A re-run of an interrupted in-place job (encrypt --in-place, deep rekey --in-place) continues its
 * journal, whose new KeySafe was sealed when the job started. If the re-run asks for other lockers
 * (or another cipher or data-unit size), silently finishing with the journal's would leave the disk
 * locked differently from what the user just asked for — say, without the recovery passphrase they
 * think they added. So the request is compared with the journal and any difference is reported.
 *
 * A provider locker without a key id ("make a new key") matches any journal locker of that provider,
 * since the first run made that key; one with a key id must match it exactly. A passphrase matches
 * if it opens one of the journal KeySafe's phrase lockers.
 */
import { describeKeySafe, unlockKeySafe } from '../keys/index.js';
import type { JournalParams } from './journal.js';
import type { EncryptSpec } from './options.js';

/** What the request asks for that the journal's new encryption does not have, one phrase each (empty: they match). */
export async function journalDifferences(to: JournalParams, spec: Pick<EncryptSpec, 'lockers' | 'cipher' | 'unitSize'>): Promise<string[]> {
  const diffs: string[] = [];
  if (spec.cipher !== undefined && spec.cipher !== to.cipher) diffs.push(`cipher ${spec.cipher} (the journal's: ${to.cipher})`);
  if (spec.unitSize !== undefined && spec.unitSize !== to.unitSize) diffs.push(`data unit ${spec.unitSize} (the journal's: ${to.unitSize})`);
  const journal = describeKeySafe(to.keySafe);
  const journalKeys = journal.filter((l) => l.kind === 'provider');
  const journalPhrases = journal.filter((l) => l.kind === 'passphrase').length;
  let phrases = 0;
  for (const l of spec.lockers) {
    if (l.kind === 'provider') {
      const id = l.provider.id;
      const found = journalKeys.some((j) => j.providerId === id && (l.keyId === undefined || j.keyId === l.keyId));
      if (!found)
        diffs.push(l.keyId === undefined ? `a key of provider '${id}' (the journal has none)` : `key '${l.keyId}' of provider '${id}' (not in the journal)`);
    } else if (l.kind === 'passphrase') {
      phrases++;
      if (journalPhrases === 0) {
        diffs.push('a recovery passphrase (the journal has none)');
        continue;
      }
      try {
        (await unlockKeySafe(to.keySafe, { passphrase: l.passphrase })).key.fill(0);
      } catch {
        diffs.push("a recovery passphrase that is not the journal's");
      }
    }
  }
  for (const j of journalKeys) {
    if (!spec.lockers.some((l) => l.kind === 'provider' && l.provider.id === j.providerId))
      diffs.push(`no key of provider '${j.providerId}' (the journal has '${j.keyId}')`);
  }
  if (phrases === 0 && journalPhrases > 0) diffs.push('no recovery passphrase (the journal has one)');
  return diffs;
}
