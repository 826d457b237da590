/**
 * `vmseal vm rekey DIR --shallow|--deep`: the whole VM onto a new VM KEK (src/vm/rekey.ts), with the
 * key options of `vmseal encrypt` (--key-provider, --key-id, --kms …) and those that open the VM now.
 */
import { rekeyVm, type VmRekeyStep } from '../../vm/index.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { checkRoundsHaveLocker, withKeys, type KeyCliOptions } from '../key-session.js';

export interface VmRekeyCliOptions extends KeyCliOptions {
  shallow?: boolean;
  deep?: boolean;
  keepRecoveryPassphrase?: boolean;
  removeRecoveryPassphrase?: boolean;
  allowMixed?: boolean;
}

const KIND_TEXT: Record<VmRekeyStep['kind'], string> = { disk: 'disk', state: 'state file', tpm: 'vTPM state key', config: 'configuration' };

export async function vmRekeyCommand(ctx: Ctx, dir: string, opts: VmRekeyCliOptions): Promise<void> {
  ctx.doing = `cannot rekey the VM ${dir}`;
  if (opts.shallow === opts.deep) {
    throw usageError(
      opts.shallow ? '--shallow and --deep contradict each other' : 'vm rekey needs --shallow or --deep',
      'Use --shallow for a new VM key-encryption key, --deep for new keys of every disk and file too',
    );
  }
  if (opts.keepRecoveryPassphrase && opts.removeRecoveryPassphrase)
    throw usageError('--keep-recovery-passphrase and --remove-recovery-passphrase contradict each other', 'Give one of them');
  if (opts.shallow && (opts.keepRecoveryPassphrase || opts.removeRecoveryPassphrase)) {
    throw usageError(
      '--keep-recovery-passphrase and --remove-recovery-passphrase belong to a deep rekey',
      'A shallow rekey keeps the keys, and so their passphrase lockers',
    );
  }
  // No locker of vm rekey takes chosen rounds: a shallow rekey keeps the passphrase lockers as they
  // are, and a deep one with --keep-recovery-passphrase re-makes them at the default rounds.
  checkRoundsHaveLocker(opts.pbkdf2Rounds, false, {
    why: 'vm rekey makes none with chosen rounds (a shallow rekey keeps the passphrase lockers; --keep-recovery-passphrase re-makes them with the default rounds)',
    hint: 'Drop --pbkdf2-rounds',
  });
  const mode = opts.shallow ? 'shallow' : 'deep';
  const result = await withKeys(ctx, opts, async (keys) => {
    const unlock = await keys.unlockOptions(undefined, { usePassphrase: keys.passphraseGiven || opts.keepRecoveryPassphrase === true });
    const provider = await keys.newKeyProvider();
    return rekeyVm(dir, {
      mode,
      keys: unlock,
      provider,
      cache: keys.cache,
      ...(opts.keyId !== undefined ? { keyId: opts.keyId } : {}),
      ...(opts.keepRecoveryPassphrase
        ? { recoveryPassphrase: 'keep' as const }
        : opts.removeRecoveryPassphrase
          ? { recoveryPassphrase: 'remove' as const }
          : {}),
      ...(opts.allowMixed ? { allowMixed: true } : {}),
    });
  });
  ctx.output.result({ ok: true, command: 'vm rekey', ...result });
  ctx.output.line(
    `Rekeyed the VM ${dir} (${mode === 'shallow' ? 'shallow: same keys, new VM key-encryption key' : 'deep: new keys, data re-encrypted'}); locked by key ${result.kek.keyId} of provider ${result.kek.providerId}${result.resumed ? ' (continued an interrupted run)' : ''}`,
  );
  for (const s of result.steps) ctx.output.line(`  ${KIND_TEXT[s.kind]} ${s.path}: ${s.action}${s.detail ? ` (${s.detail})` : ''}`);
}
