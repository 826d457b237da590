/**
 * Whether a convert that keeps an encrypted disk's encryption copies its ciphertext as it is (no
 * key needed) or must unlock it: one rule, used by the copy job and exported as convertNeedsKeys so
 * that a caller (the CLI) asks for keys — a passphrase prompt, a KMS round trip — only when the job
 * will use them. Caller and job cannot disagree: both evaluate this module on the same input.
 */
import { resolve } from 'node:path';
import { ChainDisk } from '../vmdk/index.js';
import { DEFAULT_GRAIN } from '../vmdk/create.js';
import type { ConvertDiskOptions } from './jobs.js';
import { checkPath, formatOption, type OutputOptions } from './options.js';
import { inherited, isSparseOutput, outputSubformat } from './output-shape.js';
import { openSource, type Source } from './source.js';

/**
 * Whether a convert of the locked encrypted `source` into `subformat` can copy its ciphertext
 * unchanged (each unit's XTS tweak is its unit number in the virtual disk, so the same bytes at the
 * same offset decrypt the same in any subformat): not for a snapshot-chain layer (a standalone copy
 * needs a new layer id, so a new authenticator); flat into flat (every unit copied); sparse into
 * sparse when each output grain lies within one input grain (input holes stay holes); flat into
 * sparse only without keys (every unit becomes a grain; with the keys the units whose plaintext is
 * zero are left out). Sparse into flat is never one: the input's holes must become encrypted zeros.
 */
export function copiesCiphertext(source: Source, subformat: string, opts: OutputOptions, haveKeys: boolean): boolean {
  if (source.locked !== true || source.encryption === null) return false;
  if (source.encryption.layerId !== undefined || source.stored instanceof ChainDisk) return false;
  const sparseOut = isSparseOutput(subformat);
  const inGrain = source.stored.grainSize;
  if (!sparseOut) return inGrain === undefined;
  if (inGrain !== undefined) return inGrain % (inherited(source.stored, opts, sparseOut).grainSize ?? DEFAULT_GRAIN) === 0;
  return !haveKeys;
}

/**
 * Whether `convertDisk(input, output, options)` needs `keys` (to unlock the input): true for an
 * encrypted input that is decrypted, re-encrypted under a new DEK, or converted into an output that
 * cannot hold its ciphertext unchanged (see copiesCiphertext), and for a flat input converted into a
 * sparse output — the job copies its ciphertext when given no keys, but then every unit becomes an
 * allocated grain, zeros included: a "sparse" output as large as the disk, not what a caller who
 * has the keys wants; with them the units whose plaintext is zero are left out. False for a plain
 * input and for a ciphertext copy that keys would not change (flat → flat, sparse → sparse).
 * `options` are convertDisk's (`keys` is ignored). Opens the input without keys, reading its
 * metadata only; errors are the job's own (an unreadable input, an interrupted job on it, ...).
 */
export async function convertNeedsKeys(input: string, options: ConvertDiskOptions = {}): Promise<boolean> {
  const source = await openSource(resolve(checkPath(input, 'input')), {
    ...formatOption(options.format),
    encrypted: 'decrypt',
    plain: 'read',
    unlock: 'later',
  });
  try {
    if (source.encryption === null) return false;
    if (options.encrypt !== undefined || options.decrypt === true) return true;
    return !copiesCiphertext(source, outputSubformat(source.stored, options, true), options, true);
  } finally {
    await source.close();
  }
}
