/**
 * `vmseal rekey DISK --shallow …` (new key-encryption key or passphrase change: the descriptor is
 * rewritten atomically) and `vmseal rekey DISK --deep` (new DEK: all data re-encrypted).
 */
import type { KeyProvider, LockerInfo, LockerSpec } from '../../keys/index.js';
import { deepRekey, shallowRekey, type JobResult } from '../../pipeline/index.js';
import type { Ctx } from '../context.js';
import { CliError, usageError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';
import { throughputText, withHooks } from '../jobs.js';
import { MIN_RECOVERY_PASSPHRASE, checkRoundsHaveLocker, withKeys, type KeyCliOptions, type KeySession } from '../key-session.js';
import { readPassphrase } from '../passphrase.js';
import type { CipherName, UnitSize } from '../parse.js';
import { formatOpts, lockerJson, lockersOf, lockerText, requireInputFile } from './common.js';
import { jobTuning } from './encrypt.js';

export interface RekeyCliOptions extends KeyCliOptions {
  trustV1Journal?: boolean;
  shallow?: boolean;
  deep?: boolean;
  newKey?: boolean;
  addRecoveryPassphrase?: boolean;
  removeRecoveryPassphrase?: boolean;
  newPassphraseFile?: string;
  newPassphraseEnv?: string;
  keepRecoveryPassphrase?: boolean;
  destroyOldKeys?: boolean;
  inPlace?: boolean;
  cipher?: CipherName;
  unitSize?: UnitSize;
  format?: 'vmdk' | 'raw';
  force?: boolean;
  chunkSize?: number;
  threads?: number;
}

/** The provider that serves `providerId` in this session: the local keystore, or KMIP of that name. */
async function providerFor(keys: KeySession, providerId: string): Promise<KeyProvider> {
  const local = await keys.local();
  return providerId === local.id ? local : keys.kmip(providerId);
}

/** Where a shallow rekey's new KEK goes: --key-provider, else the kind of provider the disk uses now. */
async function newKekProvider(keys: KeySession, current: LockerInfo[]): Promise<KeyProvider> {
  if (keys.options.keyProvider !== undefined) return keys.newKeyProvider();
  const local = await keys.local();
  const remote = current.find((l) => l.kind === 'provider' && l.providerId !== local.id);
  if (remote?.providerId !== undefined && keys.kmsConfigured) return keys.kmip(keys.options.kmsId ?? remote.providerId);
  return local;
}

export async function rekeyCommand(ctx: Ctx, disk: string, opts: RekeyCliOptions): Promise<void> {
  ctx.doing = `cannot rekey ${disk}`;
  if (opts.shallow === opts.deep)
    throw usageError(
      opts.shallow ? '--shallow and --deep contradict each other' : 'rekey needs --shallow or --deep',
      'Use --shallow for a new key-encryption key, --deep for a new disk key',
    );
  if (opts.addRecoveryPassphrase && opts.removeRecoveryPassphrase)
    throw usageError('--add-recovery-passphrase and --remove-recovery-passphrase contradict each other', 'Give one of them');
  if (opts.shallow && (opts.inPlace || opts.cipher !== undefined || opts.unitSize !== undefined)) {
    throw usageError('--in-place, --cipher and --unit-size belong to a deep rekey', 'Use --deep to change them');
  }
  const newPhraseGiven = opts.newPassphraseFile !== undefined || opts.newPassphraseEnv !== undefined;
  if (opts.shallow && (newPhraseGiven || opts.keepRecoveryPassphrase || opts.destroyOldKeys)) {
    throw usageError(
      '--new-passphrase-file, --new-passphrase-env, --keep-recovery-passphrase and --destroy-old-keys belong to a deep rekey',
      'A shallow rekey takes the new passphrase from --passphrase-file with --add-recovery-passphrase',
    );
  }
  checkRoundsHaveLocker(
    opts.pbkdf2Rounds,
    newPhraseGiven || opts.keepRecoveryPassphrase === true || opts.addRecoveryPassphrase === true,
    opts.deep ? '--new-passphrase-file, --new-passphrase-env, --keep-recovery-passphrase or --add-recovery-passphrase' : '--add-recovery-passphrase',
  );
  if (opts.newPassphraseFile !== undefined && opts.newPassphraseEnv !== undefined)
    throw usageError('--new-passphrase-file and --new-passphrase-env were both given', 'Give only one source of the new passphrase');
  if (opts.keepRecoveryPassphrase && (newPhraseGiven || opts.removeRecoveryPassphrase)) {
    throw usageError(
      `--keep-recovery-passphrase contradicts ${newPhraseGiven ? '--new-passphrase-file/--new-passphrase-env' : '--remove-recovery-passphrase'}`,
      'Keep the old recovery passphrase, give a new one, or remove it: one of the three',
    );
  }
  await requireInputFile(disk, 'the disk');
  if (opts.deep && opts.inPlace) ctx.interruptNote = `run \`vmseal resume ${disk}\` (or this command again) to finish`;
  const before = await lockersOf(disk, opts.format);
  const hadPhrase = before.some((l) => l.kind === 'passphrase');
  // Checked before any key is fetched or made: a deep rekey never keeps or drops a passphrase silently.
  if (opts.deep && hadPhrase && !newPhraseGiven && !opts.keepRecoveryPassphrase && !opts.removeRecoveryPassphrase && !opts.addRecoveryPassphrase) {
    throw usageError(
      `${disk} has a recovery passphrase, and a deep rekey rotates it with the disk key`,
      'Give the new one with --new-passphrase-file F or --new-passphrase-env NAME, or keep the old one with --keep-recovery-passphrase (or drop it with --remove-recovery-passphrase)',
    );
  }
  if (opts.removeRecoveryPassphrase && !hadPhrase) {
    throw new CliError('ERR_CLI_NO_PASSPHRASE_LOCKER', `${disk} has no recovery passphrase to remove`, {
      exitCode: ExitCode.FAILURE,
      hint: '`vmseal info DISK` lists its lockers',
    });
  }

  const result: JobResult = await withKeys(ctx, opts, async (keys) => {
    if (opts.shallow) {
      const changeKek =
        opts.newKey === true || opts.keyProvider !== undefined || opts.keyId !== undefined || (!opts.addRecoveryPassphrase && !opts.removeRecoveryPassphrase);
      // A passphrase source gives the NEW passphrase when adding one; otherwise it may unlock the disk.
      const unlock = await keys.unlockOptions(disk, { usePassphrase: !opts.addRecoveryPassphrase && keys.passphraseGiven, ...formatOpts(opts.format) });
      const addLockers: LockerSpec[] = [];
      const removeLockers: number[] = [];
      if (changeKek) {
        const provider = await newKekProvider(keys, before);
        addLockers.push({ kind: 'provider', provider, ...(opts.keyId !== undefined ? { keyId: opts.keyId } : {}) });
        for (const l of before) if (l.kind === 'provider') removeLockers.push(l.index);
      }
      if (opts.removeRecoveryPassphrase) for (const l of before) if (l.kind === 'passphrase') removeLockers.push(l.index);
      if (opts.addRecoveryPassphrase) addLockers.push(await keys.recoveryLocker());
      return shallowRekey(disk, { keys: unlock, addLockers, removeLockers, cache: keys.cache, ...formatOpts(opts.format) });
    }

    // Deep: a new DEK, and every locker rotated with it — an old copy of the descriptor must not open
    // with what still opens the disk. New KEKs come from each provider the disk uses (made for this
    // disk, so that the next deep rekey may retire them), unless --key-provider/--key-id choose one.
    const unlock = await keys.unlockOptions(disk, formatOpts(opts.format));
    const lockers: LockerSpec[] = [];
    if (opts.keyProvider !== undefined || opts.keyId !== undefined) {
      lockers.push(await keys.providerLocker());
    } else {
      const ids = [...new Set(before.flatMap((l) => (l.kind === 'provider' && l.providerId !== undefined ? [l.providerId] : [])))];
      for (const id of ids) lockers.push({ kind: 'provider', provider: await providerFor(keys, id) });
    }
    const phrase = await deepRekeyPassphrase(ctx, keys, disk, opts, hadPhrase, unlock.passphrase);
    if (phrase) lockers.push(phrase);
    if (lockers.length === 0)
      throw new CliError('ERR_CLI_NO_LOCKER', `${disk} would be left with no locker`, {
        exitCode: ExitCode.USAGE,
        hint: 'Give --key-provider (and its options) for the new disk key',
      });
    return withHooks(ctx, 'rekey', (hooks) =>
      deepRekey(disk, {
        ...jobTuning(opts),
        ...formatOpts(opts.format),
        signal: hooks.signal,
        onProgress: hooks.onProgress,
        keys: unlock,
        lockers,
        cache: keys.cache,
        ...(opts.destroyOldKeys ? { destroyOldKeys: true } : {}),
        ...(opts.cipher !== undefined ? { cipher: opts.cipher } : {}),
        ...(opts.unitSize !== undefined ? { unitSize: opts.unitSize } : {}),
        ...(opts.inPlace ? { inPlace: true } : {}),
      }),
    );
  });

  const after = await lockersOf(disk, opts.format);
  ctx.output.result({ ok: true, command: 'rekey', mode: opts.shallow ? 'shallow' : 'deep', ...result, lockers: after.map(lockerJson) });
  ctx.output.line(`Rekeyed ${disk} (${opts.shallow ? 'shallow: new lockers, same disk key' : 'deep: new disk key, data re-encrypted'})`);
  for (const l of after) ctx.output.line(`  locked by ${lockerText(l)}`);
  if (opts.deep) ctx.output.line(`  ${throughputText(result.bytesProcessed, result.seconds)}`);
  reportRotation(ctx, result);
}

/** What happened to the old key-encryption keys of a deep rekey: retired ones on stdout, kept ones as notes. */
export function reportRotation(ctx: Ctx, result: JobResult): void {
  const r = result.keyRotation;
  if (!r) return;
  for (const k of r.retired)
    ctx.output.line(
      `  retired old key ${k.keyId} of provider ${k.providerId} (an old copy of the disk no longer opens; --allow-retired-key to restore an old backup)`,
    );
  for (const k of r.destroyed) ctx.output.line(`  destroyed old key ${k.keyId} of provider ${k.providerId}`);
  for (const k of r.kept) {
    if (k.reason === 'still-used') continue;
    ctx.output.note(`note: old key ${k.keyId} of provider ${k.providerId} stays active: ${k.message}; an old copy of the disk still opens with it`);
  }
}

/**
 * The recovery passphrase locker of a deep rekey's new DEK: a new passphrase (--new-passphrase-file/
 * --new-passphrase-env, or --add-recovery-passphrase), the old one kept on request, or none. A disk that
 * has one must say which: silently keeping it would leave a leaked passphrase able to open the new key.
 */
async function deepRekeyPassphrase(
  ctx: Ctx,
  keys: KeySession,
  disk: string,
  opts: RekeyCliOptions,
  hadPhrase: boolean,
  oldPassphrase: string | Uint8Array | undefined,
): Promise<LockerSpec | undefined> {
  if (opts.newPassphraseFile !== undefined || opts.newPassphraseEnv !== undefined) {
    const passphrase = await readPassphrase({
      purpose: 'new recovery passphrase',
      minLength: MIN_RECOVERY_PASSPHRASE,
      env: ctx.env,
      io: ctx.io,
      fileOption: '--new-passphrase-file',
      ...(opts.newPassphraseFile !== undefined ? { passphraseFile: opts.newPassphraseFile } : { passphraseEnv: opts.newPassphraseEnv! }),
    });
    if (oldPassphrase !== undefined && Buffer.from(oldPassphrase).equals(Buffer.from(passphrase))) {
      throw usageError(
        'the new recovery passphrase is the old one',
        'Give a different passphrase with --new-passphrase-file/--new-passphrase-env, or say --keep-recovery-passphrase',
      );
    }
    return keys.phraseLocker(passphrase);
  }
  if (opts.keepRecoveryPassphrase) {
    if (!hadPhrase)
      throw usageError(`${disk} has no recovery passphrase to keep`, 'Drop --keep-recovery-passphrase, or give a new one with --new-passphrase-file F');
    if (oldPassphrase === undefined) {
      throw usageError(
        '--keep-recovery-passphrase needs the recovery passphrase, to lock the new disk key with it',
        'Give it with --passphrase-file F, --passphrase-env NAME or VMSEAL_PASSPHRASE (or --recovery-passphrase to be prompted)',
      );
    }
    ctx.output.note(
      'warning: the recovery passphrase is kept: whoever learned it can open the new disk key too (give --new-passphrase-file instead to rotate it)',
    );
    return keys.phraseLocker(oldPassphrase);
  }
  if (opts.addRecoveryPassphrase) return keys.recoveryLocker();
  return undefined;
}
