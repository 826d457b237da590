/**
 * `vm encrypt DIR` and `vm decrypt DIR`: a VM folder as one unit (docs/vm.md, "A VM folder as one
 * unit"). One journaled job across files, in this order both ways:
 *
 *   1. the disks, one by one: encryption in place (the pipeline's journaled encryptInPlace), or
 *      decryption written aside and committed over the disk (decryptDiskReplacing); a disk with
 *      snapshots as one chain, written aside and moved over itself (chain-aside.ts);
 *   2. the state files (.nvram, .vmsn, .vmem, .vmss, UEFI variables), each replaced atomically;
 *   3. the .vmx, last and atomically — so "the configuration is encrypted" means the whole job is done.
 *
 * The key model is vSphere's: one KEK per VM from the provider; each disk its own DEK, each state
 * file its own file key, the .vmx its config key, every one locked by that KEK (plus recovery
 * passphrase lockers when given). A VM that already has encrypted parts keeps their KEK: the first
 * provider locker of the provider given, on the .vmx, a disk or a state file, is the VM's KEK.
 *
 * The folder is locked for the job (src/util/lock.ts, record `DIR/.vmseal-vm.vmseal-lock`), VMware's
 * `<name>.vmx.lck` refuses it, and the job file (folder-job.ts) records the steps: after a crash,
 * the same command finishes the job (each step is idempotent: a finished file is not redone).
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describeKeySafe, type KeyCache, type KeyProvider, type LockerInfo, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { readEncryptionParams } from '../disk/index.js';
import { decryptDiskReplacing, encryptInPlace, resumeDisk } from '../pipeline/index.js';
import { openDisk as openVmdk } from '../vmdk/index.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';
import { diskState, type VmDiskState } from './config-disks.js';
import { checkChainMovable, hasChainStage, runChainJob } from './chain-aside.js';
import { VmError } from './errors.js';
import { chainOf, listVmFolder, type VmFolderDisk, type VmFolderFiles } from './folder-files.js';
import { makePendingKek, pendingKekName } from './pending-kek.js';
import { readVmJob, removeVmJob, stepFile, stepPath, vmJobCommand, writeVmJob, type VmJob, type VmJobOperation, type VmJobStep } from './folder-job.js';
import { decryptStateFile, encryptStateFile, isStateFile, readStateFileHeader } from './state-file.js';
import { isEncryptedVmx, vmxLockers } from './vmx-crypt.js';
import { VmxFile } from './vmx-file.js';
import { decryptVmxFile, encryptVmxFile, readVmxFile } from './vmx-io.js';

export interface VmFolderStepEvent {
  /** 0-based, of `total`. */
  index: number;
  total: number;
  kind: VmJobStep['kind'];
  path: string;
  /** `done` when this call did the step, `skipped` when an earlier run (or the file's state) had. */
  outcome: 'done' | 'skipped';
}

export interface VmFolderJobOptions {
  /** Stops the job between and inside steps (ERR_ABORTED); it is then finished by running it again. */
  signal?: AbortSignal;
  /** Called after each step. */
  onStep?: (event: VmFolderStepEvent) => void;
}

export interface EncryptVmFolderOptions extends VmFolderJobOptions {
  /** The provider of the VM's KEK (local keystore or KMIP). */
  provider: KeyProvider;
  /** An existing KEK of `provider` to use as the VM's (default: the VM's own, else a new one). */
  keyId?: string;
  /** Passphrase lockers added to every key of the VM (a recovery passphrase). */
  recovery?: LockerSpec[];
  /** Opens an encrypted .vmx (a VM whose configuration alone is encrypted); default: `provider`. */
  keys?: UnlockOptions;
  cache?: KeyCache;
}

export interface DecryptVmFolderOptions extends VmFolderJobOptions {
  keys: UnlockOptions;
}

export interface VmFolderResult {
  dir: string;
  operation: VmJobOperation;
  /** The configuration file: the .vmx, or vmseal-vm.json (which stays in the clear). */
  config: string;
  /** Every step, in order, with what this call did. */
  steps: Array<{ kind: VmJobStep['kind']; path: string; outcome: 'done' | 'skipped' }>;
  /** True when this call finished a job an earlier run had started. */
  resumed: boolean;
  /** encrypt: the VM's KEK. */
  kek?: { providerId: string; keyId: string };
}

const LOCK_NAME = '.vmseal-vm';

/** Take the VM folder's lock, after checking that VMware does not run the VM. */
export async function lockFolder(dir: string, vmx: string | undefined, operation: string): Promise<FileLockHandle> {
  if (vmx !== undefined) {
    const lck = `${vmx}.lck`;
    if (
      await stat(lck).then(
        (s) => s.isDirectory(),
        () => false,
      )
    ) {
      throw new VmError('ERR_VMX_BUSY', `${vmx} is in use by VMware (the lock folder ${lck} exists): power off the virtual machine first`, { file: vmx });
    }
  }
  try {
    return await acquireFileLock(lockRecordPathFor(join(dir, LOCK_NAME)), { mode: 'exclusive', record: { operation, tool: 'vmseal' } });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new VmError('ERR_VMX_BUSY', `the VM folder ${dir} is ${err.message}`, { file: dir, cause: err });
    }
    throw err;
  }
}

/** The .vmx of a listed folder (undefined for a qemu folder). */
export function vmxOf(files: VmFolderFiles): string | undefined {
  return files.kind === 'vmx' ? files.config : undefined;
}

function diskError(d: VmFolderDisk, why: string, what: string): VmError {
  return new VmError('ERR_VM_DISK', `${d.device} (${d.path}) ${why}; ${what}`, { file: d.path });
}

/** A plain disk that an in-place encryption cannot take (no descriptor to carry the key, or compressed). */
async function refuseUnencryptable(d: VmFolderDisk): Promise<void> {
  const disk = await openVmdk(d.path, { readOnly: true });
  try {
    if (disk.format === 'raw' || disk.subformat === 'streamOptimized' || !disk.descriptor) {
      throw diskError(
        d,
        `is ${disk.format === 'raw' ? 'a raw image, which has no descriptor to carry a key' : `${disk.subformat}, which cannot be encrypted in place`}`,
        'convert it to a VMDK first (`vmseal convert DISK NEW.vmdk --subformat monolithicSparse`) and name the new file in the configuration',
      );
    }
  } finally {
    await disk.close();
  }
}

function checkDisksFor(operation: VmJobOperation, disks: VmFolderDisk[]): void {
  for (const d of disks) {
    if (d.state === 'missing') throw diskError(d, 'is missing', 'restore it, or remove it from the configuration, then run the command again');
    if (d.state === 'unreadable') throw diskError(d, `cannot be read (${d.detail ?? 'unknown reason'})`, 'repair or remove it first');
    if (operation === 'decrypt' && d.state === 'vmware') {
      throw diskError(d, 'is encrypted by VMware, in a format vmseal cannot read', 'decrypt it with VMware, then run vm decrypt again');
    }
  }
}

/** The provider lockers of the VM's encrypted parts (the .vmx, vmseal disks, state files). */
async function existingLockers(files: VmFolderFiles): Promise<LockerInfo[]> {
  const out: LockerInfo[] = [];
  const vmx = vmxOf(files);
  if (vmx !== undefined && files.configEncrypted) out.push(...vmxLockers(VmxFile.parse(await readVmxFile(vmx), vmx)));
  for (const d of files.disks) {
    const params = d.state === 'vmseal' ? await readEncryptionParams(d.path) : null;
    if (params) out.push(...describeKeySafe(params.keySafe));
  }
  for (const s of files.stateFiles) if (s.encrypted) out.push(...describeKeySafe((await readStateFileHeader(s.path)).keySafe));
  return out.filter((l) => l.kind === 'provider');
}

function resumePassphrase(dir: string, firstHadOne: boolean): VmError {
  return new VmError(
    'ERR_VM_RESUME_PASSPHRASE',
    firstHadOne
      ? `the interrupted vm encrypt of ${dir} was started with a recovery passphrase, which vmseal does not store: give it again (--recovery-passphrase, the same passphrase) to finish the job, so that every file of the VM opens with it`
      : `the interrupted vm encrypt of ${dir} was started without a recovery passphrase: finish it without --recovery-passphrase (add one afterwards with vm rekey), so that every file of the VM has the same lockers`,
    { file: dir },
  );
}

/**
 * The VM's KEK: the one given, the one its encrypted parts use under `provider`, else a new one —
 * recorded as pending (its name) in the job file before it is made (pending-kek.ts).
 */
async function vmKek(files: VmFolderFiles, options: EncryptVmFolderOptions): Promise<Pick<VmJob, 'kek' | 'kekPending'>> {
  const providerId = options.provider.id;
  if (options.keyId !== undefined) return { kek: { providerId, keyId: options.keyId } };
  const own = (await existingLockers(files)).find((l) => l.providerId === providerId && l.keyId !== undefined);
  if (own) return { kek: { providerId, keyId: own.keyId! } };
  return { kekPending: { providerId, name: pendingKekName() } };
}

async function planEncrypt(files: VmFolderFiles): Promise<VmJobStep[]> {
  checkDisksFor('encrypt', files.disks);
  const steps: VmJobStep[] = [];
  for (const d of files.disks) {
    if (d.state !== 'plain') continue; // vmseal or vmware: already encrypted (a mixed VM is completed)
    if (d.layers.length > 1) await checkChainMovable(d.path, d.files);
    else await refuseUnencryptable(d);
    steps.push({ kind: 'disk', file: stepFile(files.dir, d.path), done: false });
  }
  for (const s of files.stateFiles) if (!s.encrypted) steps.push({ kind: 'state', file: stepFile(files.dir, s.path), done: false });
  const vmx = vmxOf(files);
  if (vmx !== undefined && !files.configEncrypted) steps.push({ kind: 'config', file: stepFile(files.dir, vmx), done: false });
  return steps;
}

async function planDecrypt(files: VmFolderFiles): Promise<VmJobStep[]> {
  checkDisksFor('decrypt', files.disks);
  const steps: VmJobStep[] = [];
  for (const d of files.disks) {
    if (d.state !== 'vmseal') continue;
    if (d.layers.length > 1) await checkChainMovable(d.path, d.files);
    steps.push({ kind: 'disk', file: stepFile(files.dir, d.path), done: false });
  }
  for (const s of files.stateFiles) if (s.encrypted) steps.push({ kind: 'state', file: stepFile(files.dir, s.path), done: false });
  const vmx = vmxOf(files);
  if (vmx !== undefined && files.configEncrypted) steps.push({ kind: 'config', file: stepFile(files.dir, vmx), done: false });
  return steps;
}

/**
 * For a disk step of `operation`: the chain's layers when the disk is a snapshot chain still to do
 * (or one an earlier run left staged), 'skipped' when the chain is already done, undefined for a
 * disk without snapshots.
 */
async function chainStep(path: string, operation: 'encrypt' | 'decrypt'): Promise<string[] | 'skipped' | undefined> {
  const doneState: VmDiskState = operation === 'encrypt' ? 'vmseal' : 'plain';
  if (await hasChainStage(path, operation)) return (await chainOf(path, 'plain')).layers;
  const s = await diskState(path);
  const { layers } = await chainOf(path, s.state);
  if (layers.length <= 1) return undefined;
  return s.state === doneState ? 'skipped' : layers;
}

export function otherJob(dir: string, job: VmJob, operation: VmJobOperation): VmError {
  return new VmError(
    'ERR_VM_JOB',
    `${dir} has an interrupted ${vmJobCommand(job.operation)} (started ${job.started}); finish it first with \`vmseal ${vmJobCommand(job.operation)} ${dir}\`, then run ${vmJobCommand(operation)}`,
    { file: dir },
  );
}

/** Run the job's steps that are not done, recording each in the job file; remove the file at the end. */
async function runSteps(
  dir: string,
  job: VmJob,
  options: VmFolderJobOptions,
  doStep: (step: VmJobStep, path: string) => Promise<'done' | 'skipped'>,
): Promise<VmFolderResult['steps']> {
  const out: VmFolderResult['steps'] = [];
  for (const [index, step] of job.steps.entries()) {
    const path = stepPath(dir, step);
    let outcome: 'done' | 'skipped' = 'skipped';
    if (!step.done) {
      options.signal?.throwIfAborted();
      outcome = await doStep(step, path);
      step.done = true;
      await writeVmJob(dir, job);
    }
    out.push({ kind: step.kind, path, outcome });
    options.onStep?.({ index, total: job.steps.length, kind: step.kind, path, outcome });
  }
  await removeVmJob(dir);
  return out;
}

/** The folder of `dirOrFile` (a folder, or its .vmx) and its listing, after the job file is checked. */
async function folderOf(dirOrFile: string, keys: UnlockOptions | undefined): Promise<VmFolderFiles> {
  return listVmFolder(dirOrFile, keys ? { keys } : {});
}

/**
 * Encrypt a VM folder as one unit (see the file comment): its plain disks in place, its plain state
 * files, then its .vmx, all under the VM's KEK. A VM with encrypted parts already (a mixed VM, or a
 * .vmx encrypted alone) is completed. An interrupted run is finished by calling it again.
 */
export async function encryptVmFolder(dirOrFile: string, options: EncryptVmFolderOptions): Promise<VmFolderResult> {
  const keys: UnlockOptions = options.keys ?? { providers: [options.provider], ...(options.cache ? { cache: options.cache } : {}) };
  const first = await folderOf(dirOrFile, keys);
  const { dir } = first;
  const lock = await lockFolder(dir, vmxOf(first), 'vm encrypt');
  try {
    let job = await readVmJob(dir);
    const resumed = job !== undefined;
    if (job && job.operation !== 'encrypt') throw otherJob(dir, job, 'encrypt');
    if (!job) {
      const files = await folderOf(dir, keys); // again under the lock
      const steps = await planEncrypt(files);
      if (steps.length === 0) throw new VmError('ERR_VMX_ENCRYPTED', `every file of the VM ${dir} is already encrypted`, { file: dir });
      const recoveryPassphrase = (options.recovery ?? []).length > 0;
      job = {
        operation: 'encrypt',
        started: new Date().toISOString(),
        ...(await vmKek(files, options)),
        ...(recoveryPassphrase ? { recoveryPassphrase } : {}),
        steps,
      };
      await writeVmJob(dir, job);
    }
    // Every file of the VM gets the same lockers: a resume must be given the passphrase again.
    if ((job.recoveryPassphrase === true) !== (options.recovery ?? []).length > 0) throw resumePassphrase(dir, job.recoveryPassphrase === true);
    // The new KEK: made (or, after a crash, found) under the name the job file recorded first.
    if (job.kek === undefined && job.kekPending !== undefined && job.kekPending.providerId === options.provider.id) {
      job.kek = { providerId: job.kekPending.providerId, keyId: await makePendingKek(options.provider, job.kekPending.name) };
      delete job.kekPending;
      await writeVmJob(dir, job);
    }
    const kek = job.kek;
    if (kek === undefined || kek.providerId !== options.provider.id || (options.keyId !== undefined && options.keyId !== kek.keyId)) {
      throw new VmError(
        'ERR_VM_JOB',
        `the interrupted vm encrypt of ${dir} locks its keys with key ${kek?.keyId ?? '(a new one)'} of provider ${kek?.providerId ?? job.kekPending?.providerId ?? '?'}, not ${options.keyId !== undefined ? `key ${options.keyId} ` : ''}of ${options.provider.id}: give the same key options as the first run`,
        { file: dir },
      );
    }
    const lockers: LockerSpec[] = [{ kind: 'provider', provider: options.provider, keyId: kek.keyId }, ...(options.recovery ?? [])];
    const cache = options.cache ? { cache: options.cache } : {};
    const signal = options.signal ? { signal: options.signal } : {};
    const steps = await runSteps(dir, job, options, async (step, path) => {
      if (step.kind === 'disk') {
        // A snapshot chain is written aside and moved over itself (chain-aside.ts).
        const chain = await chainStep(path, 'encrypt');
        if (chain === 'skipped') return chain;
        if (chain !== undefined) {
          await runChainJob(chain, { operation: 'encrypt', lockers, keys, ...cache, ...signal });
          return 'done';
        }
        // Plain, or half encrypted by an earlier run (its journal continues it): encryptInPlace does both.
        const r = await encryptInPlace(path, { lockers, ...cache, ...signal });
        return r.bytesProcessed === 0 && r.resumed ? 'skipped' : 'done';
      }
      if (step.kind === 'state') {
        if (await isStateFile(path)) return 'skipped';
        await encryptStateFile(path, path, { lockers, ...cache, ...signal });
        return 'done';
      }
      if (isEncryptedVmx(VmxFile.parse(await readVmxFile(path), path))) return 'skipped';
      await encryptVmxFile(path, { lockers, ...cache });
      return 'done';
    });
    return { dir, operation: 'encrypt', config: first.config, steps, resumed, kek };
  } finally {
    lock.release();
  }
}

/**
 * Decrypt a VM folder as one unit: its vmseal disks (each written aside and committed over itself),
 * its encrypted state files, then its .vmx. A mixed VM is reversed (its plain disks stay as they
 * are). An interrupted run is finished by calling it again.
 */
export async function decryptVmFolder(dirOrFile: string, options: DecryptVmFolderOptions): Promise<VmFolderResult> {
  const { keys } = options;
  const first = await folderOf(dirOrFile, keys);
  const { dir } = first;
  const lock = await lockFolder(dir, vmxOf(first), 'vm decrypt');
  try {
    let job = await readVmJob(dir);
    const resumed = job !== undefined;
    if (job && job.operation !== 'decrypt') throw otherJob(dir, job, 'decrypt');
    if (!job) {
      const steps = await planDecrypt(await folderOf(dir, keys));
      if (steps.length === 0) throw new VmError('ERR_VMX_NOT_ENCRYPTED', `no file of the VM ${dir} is encrypted`, { file: dir });
      job = { operation: 'decrypt', started: new Date().toISOString(), steps };
      await writeVmJob(dir, job);
    }
    const signal = options.signal ? { signal: options.signal } : {};
    const steps = await runSteps(dir, job, options, async (step, path) => {
      if (step.kind === 'disk') {
        const chain = await chainStep(path, 'decrypt');
        if (chain === 'skipped') return chain;
        if (chain !== undefined) {
          await runChainJob(chain, { operation: 'decrypt', keys, ...signal });
          return 'done';
        }
        // A commit an earlier run started is rolled forward (or its staging folder removed) first.
        await resumeDisk(path, { keys, ...signal });
        if ((await diskState(path)).state !== 'vmseal') return 'skipped';
        await decryptDiskReplacing(path, { keys, ...signal });
        return 'done';
      }
      if (step.kind === 'state') {
        if (!(await isStateFile(path))) return 'skipped';
        await decryptStateFile(path, path, { keys, ...signal });
        return 'done';
      }
      if (!isEncryptedVmx(VmxFile.parse(await readVmxFile(path), path))) return 'skipped';
      await decryptVmxFile(path, keys);
      return 'done';
    });
    return { dir, operation: 'decrypt', config: first.config, steps, resumed };
  } finally {
    lock.release();
  }
}
