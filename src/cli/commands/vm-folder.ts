/**
 * `vmseal vm encrypt DIR` and `vmseal vm decrypt DIR` without --config-only: the whole VM folder as
 * one journaled job (src/vm/folder-crypt.ts) — its disks, its state files, then its .vmx. An
 * interrupted run is finished by running the same command again.
 */
import type { LockerSpec, UnlockOptions } from '../../keys/index.js';
import {
  decryptVmFolder,
  encryptVmFolder,
  findVmx,
  isQemuVmFolder,
  isEncryptedVmx,
  vmxLockers,
  VmxFile,
  type VmFolderResult,
  type VmFolderStepEvent,
} from '../../vm/index.js';
import { readVmxFile } from '../../vm/vmx-io.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { withKeys, type KeySession } from '../key-session.js';
import { vmxUnlock, type VmCliOptions } from './vm-keys.js';

const KIND_TEXT: Record<VmFolderStepEvent['kind'], string> = { disk: 'disk', state: 'state file', tpm: 'vTPM state key', config: 'configuration' };

/** How to open the VM's encrypted parts: the .vmx's own lockers when it is encrypted, else the configured providers. */
async function folderUnlock(keys: KeySession, target: string): Promise<UnlockOptions> {
  if (!(await isQemuVmFolder(target))) {
    const vmx = await findVmx(target);
    const file = VmxFile.parse(await readVmxFile(vmx), vmx);
    if (isEncryptedVmx(file)) return vmxUnlock(keys, vmx, vmxLockers(file), file.rawBytes('encryption.keySafe')!.toString('latin1'), true);
  }
  return keys.unlockOptions(undefined, { usePassphrase: keys.passphraseGiven });
}

function progress(ctx: Ctx, verb: string): (e: VmFolderStepEvent) => void {
  return (e) => {
    if (e.outcome === 'done') ctx.output.line(`  ${verb} ${KIND_TEXT[e.kind]} ${e.path} (${e.index + 1} of ${e.total})`);
  };
}

function report(ctx: Ctx, r: VmFolderResult, verb: string): void {
  ctx.output.result({ ok: true, command: `vm ${r.operation}`, configOnly: false, ...r });
  const count = (kind: VmFolderStepEvent['kind']): number => r.steps.filter((s) => s.kind === kind).length;
  const parts = [`${count('disk')} disk(s)`, `${count('state')} state file(s)`];
  if (count('config') > 0) parts.push('the configuration');
  ctx.output.line(`${verb} the VM ${r.dir}: ${parts.join(', ')}${r.resumed ? ' (finished an interrupted job)' : ''}`);
  if (r.kek) ctx.output.line(`  every key locked by key ${r.kek.keyId} of provider ${r.kek.providerId} (the VM's key-encryption key)`);
}

export async function vmEncryptFolderCommand(ctx: Ctx, target: string, opts: VmCliOptions): Promise<void> {
  if (opts.workstation) {
    throw usageError(
      '--workstation encrypts the configuration alone (a passphrase in VMware Workstation construction): give --config-only with it',
      'Encrypt the disks with `vmseal vm encrypt DIR` (a provider key), or the .vmx alone with `--config-only --workstation`',
    );
  }
  let newHome: string | undefined;
  const result = await withKeys(ctx, opts, async (keys) => {
    const locker = await keys.providerLocker();
    if (locker.kind !== 'provider') throw new Error('a provider locker was expected');
    const recovery: LockerSpec[] = opts.recoveryPassphrase ? [await keys.recoveryLocker()] : [];
    newHome = keys.newKeystoreHome;
    const unlock = await folderUnlock(keys, target);
    return encryptVmFolder(target, {
      provider: locker.provider,
      ...(locker.keyId !== undefined ? { keyId: locker.keyId } : {}),
      recovery,
      keys: { ...unlock, providers: [locker.provider, ...(Array.isArray(unlock.providers) ? unlock.providers : [])] },
      cache: keys.cache,
      signal: ctx.signal,
      onStep: progress(ctx, 'encrypted'),
    });
  });
  report(ctx, result, 'Encrypted');
  if (newHome !== undefined) {
    ctx.output.note(
      `Note: created a new local keystore in ${newHome} for the VM's key. Back it up (\`vmseal keys backup FILE\`): without it, the VM opens only with a recovery passphrase.`,
    );
  }
}

export async function vmDecryptFolderCommand(ctx: Ctx, target: string, opts: VmCliOptions): Promise<void> {
  const result = await withKeys(ctx, opts, async (keys) =>
    decryptVmFolder(target, { keys: await folderUnlock(keys, target), signal: ctx.signal, onStep: progress(ctx, 'decrypted') }),
  );
  report(ctx, result, 'Decrypted');
}
