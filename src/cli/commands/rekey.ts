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
import { withKeys, type KeyCliOptions, type KeySession } from '../key-session.js';
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
  if (opts.shallow === opts.deep) throw usageError(opts.shallow ? '--shallow and --deep contradict each other' : 'rekey needs --shallow or --deep', 'Use --shallow for a new key-encryption key, --deep for a new disk key');
  if (opts.addRecoveryPassphrase && opts.removeRecoveryPassphrase) throw usageError('--add-recovery-passphrase and --remove-recovery-passphrase contradict each other', 'Give one of them');
  if (opts.shallow && (opts.inPlace || opts.cipher !== undefined || opts.unitSize !== undefined)) {
    throw usageError('--in-place, --cipher and --unit-size belong to a deep rekey', 'Use --deep to change them');
  }
  await requireInputFile(disk, 'the disk');
  if (opts.deep && opts.inPlace) ctx.interruptNote = `run \`vmseal resume ${disk}\` (or this command again) to finish`;
  const before = await lockersOf(disk, opts.format);
  const hadPhrase = before.some((l) => l.kind === 'passphrase');
  if (opts.removeRecoveryPassphrase && !hadPhrase) {
    throw new CliError('ERR_CLI_NO_PASSPHRASE_LOCKER', `${disk} has no recovery passphrase to remove`, { exitCode: ExitCode.FAILURE, hint: '`vmseal info DISK` lists its lockers' });
  }

  const result: JobResult = await withKeys(ctx, opts, async (keys) => {
    if (opts.shallow) {
      const changeKek = opts.newKey === true || opts.keyProvider !== undefined || opts.keyId !== undefined || (!opts.addRecoveryPassphrase && !opts.removeRecoveryPassphrase);
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

    // Deep: a new DEK. Provider lockers are carried over (same KEKs) unless a new KEK is asked for;
    // a recovery passphrase can only be carried over by someone who knows it.
    const unlock = await keys.unlockOptions(disk, formatOpts(opts.format));
    const keepPhrase = hadPhrase && !opts.removeRecoveryPassphrase;
    if (keepPhrase && !keys.passphraseGiven) {
      throw usageError(
        `${disk} has a recovery passphrase: a deep rekey needs it to lock the new disk key too`,
        'Give it (--passphrase-file F, --passphrase-env NAME, VMSEAL_PASSPHRASE, or --recovery-passphrase to be prompted), or add --remove-recovery-passphrase to drop it',
      );
    }
    const lockers: LockerSpec[] = [];
    if (opts.newKey || opts.keyProvider !== undefined || opts.keyId !== undefined) {
      lockers.push(await keys.providerLocker());
    } else {
      for (const l of before) {
        if (l.kind === 'provider' && l.providerId !== undefined && l.keyId !== undefined) lockers.push({ kind: 'provider', provider: await providerFor(keys, l.providerId), keyId: l.keyId });
      }
    }
    if (keepPhrase || opts.addRecoveryPassphrase) {
      const passphrase = opts.addRecoveryPassphrase ? (await keys.recoveryLocker()) : { kind: 'passphrase' as const, passphrase: unlock.passphrase! };
      lockers.push(passphrase);
    }
    if (lockers.length === 0) throw new CliError('ERR_CLI_NO_LOCKER', `${disk} would be left with no locker`, { exitCode: ExitCode.USAGE, hint: 'Give --key-provider (and its options) for the new disk key' });
    return withHooks(ctx, 'rekey', (hooks) =>
      deepRekey(disk, {
        ...jobTuning(opts),
        ...formatOpts(opts.format),
        signal: hooks.signal,
        onProgress: hooks.onProgress,
        keys: unlock,
        lockers,
        cache: keys.cache,
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
}
