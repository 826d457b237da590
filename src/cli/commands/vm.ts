/**
 * `vmseal vm encrypt|decrypt DIR|FILE.vmx --config-only` and `vmseal vm info DIR|FILE.vmx`: the
 * VMware configuration encryption of a VM (src/vm). Without --config-only, encrypt and decrypt take
 * the whole VM folder as one job (vm-folder.ts).
 */
import { dirname } from 'node:path';
import type { LockerInfo, LockerSpec } from '../../keys/index.js';
import {
  VmError,
  VmxFile,
  inspectQemuVm,
  isQemuVmFolder,
  decryptVmxFile,
  encryptVmxFile,
  findVmx,
  inspectVm,
  isEncryptedVmx,
  vmxLockers,
  type VmDisk,
  type VmInfo,
} from '../../vm/index.js';
import { readVmxFile } from '../../vm/vmx-io.js';
import { vmJobCommand } from '../../vm/folder-job.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { checkRoundsHaveLocker, withKeys, type KeySession } from '../key-session.js';
import { lockerJson } from './common.js';
import { vmDecryptFolderCommand, vmEncryptFolderCommand } from './vm-folder.js';
import { vmxUnlock, type VmCliOptions } from './vm-keys.js';

export type { VmCliOptions };

async function readVmx(vmx: string): Promise<VmxFile> {
  return VmxFile.parse(await readVmxFile(vmx), vmx);
}

/** "passphrase (PBKDF2-HMAC-SHA-1, 10000 rounds)", "key K of provider P". */
function vmxLockerText(l: LockerInfo): string {
  if (l.kind === 'provider') return `key ${l.keyId ?? '?'} of provider ${l.providerId ?? '?'}`;
  if (l.kind === 'passphrase') {
    const kdf = l.kdf ? ` (${l.kdf.name}${l.kdf.rounds !== undefined ? `, ${l.kdf.rounds} rounds` : ''})` : '';
    return `passphrase${kdf}`;
  }
  return `${l.lockerType} locker (not supported by vmseal)`;
}

/** One passphrase locker in Workstation's construction (PBKDF2-HMAC-SHA-1, 10,000 rounds, HMAC-SHA-1). */
async function workstationLocker(keys: KeySession): Promise<LockerSpec> {
  return keys.recoveryLocker('new passphrase of the VM', 'workstation');
}

export async function vmEncryptCommand(ctx: Ctx, target: string, opts: VmCliOptions): Promise<void> {
  ctx.doing = `cannot encrypt the VM ${target}`;
  checkRoundsHaveLocker(opts.pbkdf2Rounds, opts.workstation === true || opts.recoveryPassphrase === true, '--recovery-passphrase or --workstation');
  if (!opts.configOnly) return vmEncryptFolderCommand(ctx, target, opts);
  if (opts.workstation && (opts.keyProvider !== undefined || opts.keyId !== undefined)) {
    throw usageError('--workstation locks the configuration with a passphrase alone: --key-provider and --key-id cannot be given with it');
  }
  const vmx = await findVmx(target);
  // Refused before any key is made or passphrase asked.
  if (isEncryptedVmx(await readVmx(vmx))) throw new VmError('ERR_VMX_ENCRYPTED', `${vmx} is already encrypted`, { file: vmx });
  let newHome: string | undefined;
  await withKeys(ctx, opts, async (keys) => {
    const lockers: LockerSpec[] = opts.workstation ? [await workstationLocker(keys)] : await keys.newLockers();
    newHome = keys.newKeystoreHome;
    return encryptVmxFile(vmx, { lockers, cache: keys.cache });
  });
  const lockers = vmxLockers(await readVmx(vmx));
  ctx.output.result({ ok: true, command: 'vm encrypt', vmx, configOnly: true, lockers: lockers.map(lockerJson) });
  ctx.output.line(`Encrypted the configuration of ${vmx}`);
  for (const l of lockers) ctx.output.line(`  config key locked by ${vmxLockerText(l)}`);
  if (!opts.workstation) {
    ctx.output.note(
      "Note: for a VM that VMware Workstation must run, use --workstation: a passphrase alone in Workstation's own construction is what it is known to open (vmseal's provider and PBKDF2-HMAC-SHA-256 lockers are not).",
    );
  }
  if (newHome !== undefined) {
    ctx.output.note(
      `Note: created a new local keystore in ${newHome} for the configuration key. Back it up (\`vmseal keys backup FILE\`): without it, the .vmx opens only with a passphrase.`,
    );
  }
}

export async function vmDecryptCommand(ctx: Ctx, target: string, opts: VmCliOptions): Promise<void> {
  ctx.doing = `cannot decrypt the VM ${target}`;
  if (!opts.configOnly) return vmDecryptFolderCommand(ctx, target, opts);
  const vmx = await findVmx(target);
  const file = await readVmx(vmx);
  if (!isEncryptedVmx(file)) throw new VmError('ERR_VMX_NOT_ENCRYPTED', `${vmx} is not encrypted`, { file: vmx });
  const lockers = vmxLockers(file); // refuses a file with encryption.data but no encryption.keySafe
  const keySafe = file.rawBytes('encryption.keySafe')!.toString('latin1');
  const result = await withKeys(ctx, opts, async (keys) => decryptVmxFile(vmx, await vmxUnlock(keys, vmx, lockers, keySafe, true)));
  ctx.output.result({ ok: true, command: 'vm decrypt', vmx, configOnly: true, unlockedBy: result.unlockedBy, holdsDiskKey: result.holdsDiskKey });
  const by = result.unlockedBy.kind === 'passphrase' ? 'the passphrase' : `key ${result.unlockedBy.keyId} of provider ${result.unlockedBy.providerId}`;
  ctx.output.line(`Decrypted the configuration of ${vmx} (opened with ${by})`);
  if (result.holdsDiskKey) {
    ctx.output.note(
      `Note: ${vmx} now holds dataFileKey in the clear, the key of the disks VMware encrypted: whoever can read the .vmx can read those disks. Keep its permissions tight, or encrypt it again.`,
    );
  }
}

const STATE_TEXT: Record<VmDisk['state'], string> = {
  plain: 'not encrypted',
  vmseal: 'encrypted by vmseal',
  vmware: 'encrypted by VMware (not readable by vmseal)',
  missing: 'missing (no such file)',
  unreadable: 'unreadable',
};

/** VMware's two summary lines, then one line per locker and disk. */
export function vmInfoLines(info: VmInfo): string[] {
  const lines = [info.configEncrypted ? 'VM configuration files are encrypted.' : 'VM configuration files are not encrypted.'];
  const disks = info.disks;
  if (disks === null) {
    lines.push('Hard disks: not listed (they are named in the encrypted configuration, and no key given opens it).');
  } else if (info.encryptedDisks === 0) {
    const unknown = disks.filter((d) => d.state === 'missing' || d.state === 'unreadable').length;
    lines.push(
      disks.length === 0
        ? 'No hard disks are encrypted (the VM has none).'
        : unknown > 0
          ? `No hard disks are known to be encrypted (${unknown} of ${disks.length} missing or unreadable).`
          : 'No hard disks are encrypted.',
    );
  } else {
    const encrypted = disks.filter((d) => d.state === 'vmseal' || d.state === 'vmware').map((d) => d.device);
    lines.push(`Encrypted hard disks: ${encrypted.join(', ')} (${encrypted.length} of ${disks.length}).`);
    if (info.mixed) lines.push('The VM is mixed: some hard disks are encrypted and some are not (VMware requires all or none).');
  }
  if (info.job) {
    const j = info.job;
    lines.push(
      `An interrupted ${vmJobCommand(j.operation)} (started ${j.started}, ${j.stepsDone} of ${j.steps} steps done): run \`vmseal ${vmJobCommand(j.operation)} ${dirname(info.vmx)}\` with the same key options to finish it.`,
    );
  }
  if (info.holdsDiskKey) lines.push('The configuration holds dataFileKey: VMware Workstation encrypted the disks it names with it.');
  lines.push('', `configuration: ${info.vmx}`);
  for (const l of info.lockers) lines.push(`  config key locked by ${vmxLockerText(l)}`);
  for (const d of disks ?? []) {
    lines.push(`${d.device}: ${d.fileName}: ${STATE_TEXT[d.state]}${d.detail !== undefined ? ` (${d.detail})` : ''}`);
    const layers = d.layers ?? [];
    for (const [i, l] of layers.entries()) {
      lines.push(
        `  snapshot layer ${i + 1} of ${layers.length}${i === 0 ? ' (top)' : i === layers.length - 1 ? ' (base)' : ''}: ${l.path}: ${STATE_TEXT[l.state]}${l.detail !== undefined ? ` (${l.detail})` : ''}`,
      );
    }
  }
  return lines;
}

export async function vmInfoCommand(ctx: Ctx, target: string, opts: VmCliOptions): Promise<void> {
  ctx.doing = `cannot inspect the VM ${target}`;
  if (await isQemuVmFolder(target)) {
    const qemu = await inspectQemuVm(target);
    ctx.output.result({ ok: true, command: 'vm info', ...qemu });
    for (const line of vmInfoLines(qemu)) ctx.output.line(line);
    return;
  }
  const vmx = await findVmx(target);
  const file = await readVmx(vmx);
  let info: VmInfo;
  if (!isEncryptedVmx(file)) {
    info = await inspectVm(vmx);
  } else {
    const lockers = vmxLockers(file);
    const keySafe = file.rawBytes('encryption.keySafe')!.toString('latin1');
    info = await withKeys(ctx, opts, async (keys) => {
      const unlock = await vmxUnlock(keys, vmx, lockers, keySafe, false);
      if (unlock.passphrase === undefined && lockers.every((l) => l.kind === 'passphrase')) return inspectVm(vmx);
      try {
        return await inspectVm(vmx, { keys: unlock });
      } catch (err) {
        // Nothing given opens it (no passphrase, provider unreachable): report what is known without it.
        const code = (err as { code?: unknown }).code;
        if (code !== 'ERR_NO_KEY' && code !== 'ERR_DISK_LOCKED') throw err;
        return inspectVm(vmx);
      }
    });
  }
  ctx.output.result({ ok: true, command: 'vm info', ...info, lockers: info.lockers.map(lockerJson) });
  for (const line of vmInfoLines(info)) ctx.output.line(line);
}
