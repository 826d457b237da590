/**
 * `vmseal vm tpm DIR [--socket-dir D] [--tools]` and the key options of encrypt: run the vTPM of the
 * qemu VM folder DIR (described by DIR/vmseal-vm.json) in the foreground — swtpm with its state
 * encrypted under the state key sealed in the manifest — print the qemu options that attach it, and
 * stop swtpm on SIGINT/SIGTERM (exit 0) or end when qemu shuts the vTPM down. The first start makes
 * the state key (locked like a disk's DEK: a KEK of the chosen provider — the one the VM's encrypted
 * disks use, when --key-id does not name another — and --recovery-passphrase) and the first state.
 */
import { describeKeySafe, type KeyProvider, type LockerSpec, type UnlockOptions } from '../../keys/index.js';
import { readEncryptionParams } from '../../disk/index.js';
import { listVmFolder, readManifest, refuseMixed, startVmTpm, VmError, type VmManifest } from '../../vm/index.js';
import { resolve } from 'node:path';
import type { Ctx } from '../context.js';
import { checkRoundsHaveLocker, withKeys, type KeyCliOptions, type KeySession } from '../key-session.js';

export interface VmTpmCliOptions extends KeyCliOptions {
  socketDir?: string;
  tools?: boolean;
  /** Run the vTPM of a VM whose disks are partly encrypted (refused otherwise: all or none). */
  allowMixed?: boolean;
}

/**
 * The VM's KEK, as vSphere keeps one per VM: the provider locker of the first of the VM's disks
 * encrypted under the provider new keys go to, so that the vTPM's state key sits under the same KEK.
 */
async function vmKek(dir: string, manifest: VmManifest, keys: KeySession): Promise<string | undefined> {
  const provider = await keys.newKeyProvider();
  for (const d of manifest.disks) {
    const params = await readEncryptionParams(resolve(dir, d.file)).catch(() => null);
    if (!params) continue;
    const l = describeKeySafe(params.keySafe).find((x) => x.kind === 'provider' && x.providerId === provider.id);
    if (l?.keyId !== undefined) return l.keyId;
  }
  return undefined;
}

async function lockersFor(dir: string, manifest: VmManifest, keys: KeySession): Promise<LockerSpec[]> {
  const lockers = await keys.newLockers();
  const first = lockers[0];
  if (first?.kind === 'provider' && first.keyId === undefined) {
    const keyId = await vmKek(dir, manifest, keys);
    if (keyId !== undefined) lockers[0] = { ...first, keyId };
  }
  return lockers;
}

/** Unlock options for the manifest's KeySafe: the local keystore, and KMIP providers it names if --kms is given. */
async function unlockFor(manifest: VmManifest, keys: KeySession): Promise<UnlockOptions> {
  const first = manifest.tpm?.keySafe === undefined;
  const unlock = await keys.unlockOptions(undefined, { usePassphrase: !first && keys.passphraseGiven });
  const local = await keys.local();
  if (!first && keys.kmsConfigured) {
    const providers: KeyProvider[] = Array.isArray(unlock.providers) ? [...unlock.providers] : [];
    for (const l of describeKeySafe(manifest.tpm!.keySafe!)) {
      if (l.kind === 'provider' && l.providerId !== undefined && l.providerId !== local.id) providers.push(await keys.kmip(l.providerId));
    }
    unlock.providers = providers;
  } else if (!first) {
    for (const l of describeKeySafe(manifest.tpm!.keySafe!)) {
      if (l.kind === 'provider' && l.providerId !== undefined && l.providerId !== local.id) keys.unreachableProviders.add(l.providerId);
    }
  }
  return unlock;
}

function untilAborted(signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((done) => signal.addEventListener('abort', () => done(), { once: true }));
}

export async function vmTpmCommand(ctx: Ctx, dir: string, opts: VmTpmCliOptions): Promise<void> {
  ctx.doing = `cannot start the vTPM of ${dir}`;
  const log = (line: string): void => {
    if (!ctx.output.quiet) ctx.output.error(`vmseal: ${line}`);
  };
  // A passphrase locker is made only at the first start (no state key yet), with --recovery-passphrase.
  checkRoundsHaveLocker(opts.pbkdf2Rounds, opts.recoveryPassphrase === true, '--recovery-passphrase');
  await withKeys(ctx, opts, async (keys) => {
    const manifest = await readManifest(dir);
    checkRoundsHaveLocker(opts.pbkdf2Rounds, manifest.tpm?.keySafe === undefined, {
      why: `the vTPM state key of ${dir} exists already: --recovery-passphrase unlocks it, and no locker is made`,
      hint: 'Drop --pbkdf2-rounds (the rounds are chosen at the first start)',
    });
    // VMware's all-or-none rule: a VM whose disks are partly encrypted is refused before swtpm starts.
    if (!opts.allowMixed) refuseMixed((await listVmFolder(dir)).disks, 'vm tpm', dir);
    const first = manifest.tpm?.keySafe === undefined;
    const unlock = await unlockFor(manifest, keys);
    const lockers = first && manifest.tpm ? await lockersFor(dir, manifest, keys) : undefined;
    const tpm = await startVmTpm(dir, {
      keys: unlock,
      cache: keys.cache,
      ...(lockers ? { lockers } : {}),
      ...(opts.socketDir !== undefined ? { socketDir: opts.socketDir } : {}),
      tools: opts.tools === true,
      log,
    });
    ctx.doing = 'the vTPM failed';
    let ended: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    try {
      ctx.output.error(
        `vmseal: vTPM of ${dir}: state ${tpm.stateDir} (${tpm.created ? 'made now' : 'existing'}), encrypted by swtpm (aes-256-cbc) under the state key sealed in vmseal-vm.json`,
      );
      ctx.output.error(`vmseal: qemu options: ${tpm.qemuArgs.join(' ')}`);
      if (tpm.dataSocket !== undefined) ctx.output.error(`vmseal: tpm2-tools: TPM2TOOLS_TCTI=swtpm:path=${tpm.dataSocket}`);
      ctx.output.error('vmseal: running until Ctrl-C or SIGTERM, or until qemu shuts the vTPM down');
      const exited = tpm.exited.then((e) => (ended = e));
      await Promise.race([untilAborted(ctx.signal), exited]);
      if (!ended) log('stopping swtpm');
    } finally {
      await tpm.stop();
    }
    if (ended && ended.code !== 0) {
      throw new VmError('ERR_VM_TPM', `swtpm ended by itself (${ended.signal ?? `exit code ${ended.code}`})`);
    }
    if (ended) log('swtpm ended: the VM shut the vTPM down');
    ctx.output.result({
      ok: true,
      command: 'vm tpm',
      dir,
      state: tpm.stateDir,
      created: tpm.created,
      ctrlSocket: tpm.ctrlSocket,
      ...(tpm.dataSocket !== undefined ? { dataSocket: tpm.dataSocket } : {}),
      qemuArgs: tpm.qemuArgs,
    });
  });
}
