/**
 * `vm rekey`: a whole VM onto a new VM KEK, as one journaled job across its files.
 *
 *   shallow  every key of the VM stays and is locked anew under the new VM KEK: each disk's KeySafe
 *            (every layer of a snapshot chain), each encrypted state file's header, the vTPM state
 *            key in the manifest, the .vmx's config key. The other provider lockers are removed;
 *            recovery-passphrase lockers stay (they lock the same keys).
 *   deep     new keys: each disk re-encrypted under a new DEK (the disk deep rekey, copy mode; a
 *            snapshot chain as one job, every layer under one new DEK: docs/pipeline.md), each
 *            state file under a new file key, the .vmx under a new config key, all locked by the new
 *            VM KEK. The vTPM state key is only rewrapped, not rotated (swtpm cannot re-encrypt its
 *            state in place). Recovery-passphrase lockers are kept (re-made with the passphrase given)
 *            or removed, as the caller says: a deep rekey never keeps one silently.
 *
 * The job is the VM folder's one job file (folder-job.ts, `DIR/.vmseal-vm-job`, shared with vm
 * encrypt/decrypt, so that no two folder jobs interleave): the new VM KEK is made (or `keyId` taken)
 * first and recorded with the operation and the steps before any file changes; each file's rekey is
 * atomic by itself (a rename, or the disk layer's journal), and the job file marks it done. Order:
 * disks, state files, the vTPM key, the .vmx last. A run that finds the job (a killed run) continues
 * it with the recorded KEK, skipping the steps done — a file rekeyed whose mark did not reach the job
 * file is rekeyed again, which a shallow rekey does idempotently and a deep one does twice,
 * harmlessly. The job file is removed at the end. The folder lock of the folder jobs keeps runs apart.
 */
import { describeKeySafe, type KeyCache, type KeyProvider, type LockerInfo, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { readEncryptionParams } from '../disk/index.js';
import { deepRekey, shallowRekey } from '../pipeline/index.js';
import { refuseMixed } from './all-or-none.js';
import { VmError } from './errors.js';
import { lockFolder, otherJob, vmxOf } from './folder-crypt.js';
import { readVmJob, removeVmJob, stepFile, stepPath, writeVmJob, type VmJob, type VmJobStep } from './folder-job.js';
import { listVmFolder, type VmFolderFiles } from './folder-files.js';
import { readManifest } from './manifest.js';
import { makePendingKek, pendingKekName } from './pending-kek.js';
import { readStateFileHeader, rewrapStateFile } from './state-file.js';
import { reencryptStateFile } from './state-file-rekey.js';
import { rewrapVmTpmKey } from './tpm.js';
import { VMX_KEYSAFE_KEY } from './vmx-crypt.js';
import { VmxFile } from './vmx-file.js';
import { readVmxFile } from './vmx-io.js';
import { reencryptVmxFile, rewrapVmxFile } from './vmx-rekey.js';

export interface RekeyVmOptions {
  mode: 'shallow' | 'deep';
  /** Opens the VM's current keys (providers of its lockers, a passphrase, a cache). */
  keys: UnlockOptions;
  /** Where the new VM KEK is made (or where `keyId` lives). */
  provider: KeyProvider;
  /** Lock with this existing KEK of `provider` instead of a new one. */
  keyId?: string;
  /**
   * Deep only, required when a file has a recovery-passphrase locker: 'keep' locks the new keys with
   * the passphrase of `keys.passphrase` too, 'remove' drops it.
   */
  recoveryPassphrase?: 'keep' | 'remove';
  /** Rekey a VM whose disks are partly encrypted (its plain disks are left as they are). */
  allowMixed?: boolean;
  cache?: KeyCache;
  /** Called after each file. */
  onStep?: (step: VmRekeyStep) => void;
}

export type VmRekeyItemKind = 'disk' | 'state' | 'tpm' | 'config';

export interface VmRekeyStep {
  kind: VmRekeyItemKind;
  path: string;
  /** rekeyed now; done by the killed run this one continued; skipped (plain, or encrypted by VMware). */
  action: 'rekeyed' | 'already done' | 'skipped';
  detail?: string;
}

export interface RekeyVmResult {
  mode: 'shallow' | 'deep';
  /** The VM KEK every key of the VM is now locked by. */
  kek: { providerId: string; keyId: string };
  /** Whether this run continued a killed one. */
  resumed: boolean;
  steps: VmRekeyStep[];
}

interface Item {
  kind: VmRekeyItemKind;
  path: string;
  /** Why the file is left as it is; undefined for a file to rekey. */
  skip?: string;
}

/** The KeySafe a file holds now (read again at each step: a resumed job's files may have changed). */
async function keySafeOf(kind: VmRekeyItemKind, path: string, dir: string): Promise<string> {
  if (kind === 'disk') {
    const params = await readEncryptionParams(path);
    if (!params) throw new VmError('ERR_VM_DISK', `${path} is not encrypted, unlike the disk it belongs to: the chain is damaged`, { file: path });
    return params.keySafe;
  }
  if (kind === 'state') return (await readStateFileHeader(path)).keySafe;
  if (kind === 'tpm') return (await readManifest(dir)).tpm!.keySafe!;
  return VmxFile.parse(await readVmxFile(path), path)
    .rawBytes(VMX_KEYSAFE_KEY)!
    .toString('latin1');
}

/** The VM's files, in the job's order, from the folder listing (refusing what a rekey cannot do). */
async function itemsOf(files: VmFolderFiles, mode: 'shallow' | 'deep'): Promise<Item[]> {
  const items: Item[] = [];
  for (const d of files.disks) {
    if (d.state === 'plain') items.push({ kind: 'disk', path: d.path, skip: 'not encrypted' });
    else if (d.state === 'vmware') items.push({ kind: 'disk', path: d.path, skip: 'encrypted by VMware (not readable by vmseal)' });
    else if (d.state !== 'vmseal') {
      throw new VmError('ERR_VM_DISK', `${d.device} (${d.path}) is ${d.state}${d.detail ? ` (${d.detail})` : ''}: the VM cannot be rekeyed as a whole`, {
        file: d.path,
      });
    } else {
      // Shallow: every layer's KeySafe (each layer's descriptor carries its own copy of the chain's DEK).
      // Deep: the disk's path only; a snapshot chain is re-encrypted as a whole, every layer under one
      // new DEK, by the pipeline's journaled chain job (a killed one is finished by the next step's run).
      for (const layer of mode === 'shallow' ? d.layers : [d.path]) items.push({ kind: 'disk', path: layer });
    }
  }
  for (const s of files.stateFiles) items.push(s.encrypted ? { kind: 'state', path: s.path } : { kind: 'state', path: s.path, skip: 'not encrypted' });
  if (files.kind === 'qemu') {
    if ((await readManifest(files.dir)).tpm?.keySafe !== undefined) items.push({ kind: 'tpm', path: files.config });
  } else if (files.configEncrypted) items.push({ kind: 'config', path: files.config });
  return items;
}

/** Rekey the VM folder `dir` (or its .vmx): see the top of this file. */
export async function rekeyVm(dir: string, options: RekeyVmOptions): Promise<RekeyVmResult> {
  if (options === null || typeof options !== 'object' || (options.mode !== 'shallow' && options.mode !== 'deep')) {
    throw new VmError('ERR_INVALID_ARGUMENT', "Expected { mode: 'shallow' | 'deep', keys, provider } for options");
  }
  const { keys, provider, mode } = options;
  const operation = mode === 'shallow' ? 'rekey-shallow' : 'rekey-deep';
  const first = await listVmFolder(dir, { keys });
  const lock = await lockFolder(first.dir, vmxOf(first), `vm rekey --${mode}`);
  try {
    const files = await listVmFolder(first.dir, { keys }); // again under the lock
    let job: VmJob | undefined = await readVmJob(files.dir);
    const resumed = job !== undefined;
    if (job && job.operation !== operation) throw otherJob(files.dir, job, operation);
    const jobProvider = job?.kek?.providerId ?? job?.kekPending?.providerId;
    if (job && (jobProvider !== provider.id || (options.keyId !== undefined && options.keyId !== job.kek?.keyId))) {
      throw new VmError(
        'ERR_VM_JOB',
        `the interrupted vm rekey of ${files.dir} locks the VM with key ${job.kek?.keyId ?? '(a new one)'} of provider ${jobProvider ?? '?'}, and this run asks for another key: run it again with that provider (and that --key-id or none)`,
        { file: files.dir },
      );
    }
    if (options.allowMixed !== true) refuseMixed(files.disks, `vm rekey --${mode}`, files.dir);
    const items = await itemsOf(files, mode);
    const todo = items.filter((i) => i.skip === undefined);
    const recovery = job?.recovery ?? options.recoveryPassphrase;
    if (!job && mode === 'deep') {
      const withPhrase: string[] = [];
      for (const i of todo) if (describeKeySafe(await keySafeOf(i.kind, i.path, files.dir)).some((l) => l.kind === 'passphrase')) withPhrase.push(i.path);
      if (withPhrase.length > 0 && recovery === undefined) {
        throw new VmError(
          'ERR_INVALID_ARGUMENT',
          `a deep rekey makes new keys, and these files have a recovery passphrase: ${withPhrase.join(', ')}; say whether to keep it (--keep-recovery-passphrase, with the passphrase given; recoveryPassphrase: 'keep') or to remove it (--remove-recovery-passphrase; 'remove')`,
        );
      }
    }
    if (mode === 'deep' && recovery === 'keep' && keys.passphrase === undefined) {
      throw new VmError('ERR_INVALID_ARGUMENT', 'keeping the recovery passphrase needs it: give it (--passphrase-file …; keys.passphrase)');
    }
    if (!job) {
      if (todo.length === 0)
        throw new VmError('ERR_VMX_NOT_ENCRYPTED', `nothing of the VM ${files.dir} is encrypted by vmseal: there is no key to rekey`, { file: files.dir });
      job = {
        operation,
        started: new Date().toISOString(),
        // A new KEK is recorded by name before it is made, so a crash between the two cannot orphan it.
        ...(options.keyId !== undefined
          ? { kek: { providerId: provider.id, keyId: options.keyId } }
          : { kekPending: { providerId: provider.id, name: pendingKekName() } }),
        ...(mode === 'deep' && recovery !== undefined ? { recovery } : {}),
        steps: todo.map((i): VmJobStep => ({ kind: i.kind, file: stepFile(files.dir, i.path), done: false })),
      };
      await writeVmJob(files.dir, job);
    }
    // The new KEK: made (or, after a crash, found) under the name the job file recorded first.
    if (job.kek === undefined && job.kekPending !== undefined) {
      job.kek = { providerId: job.kekPending.providerId, keyId: await makePendingKek(provider, job.kekPending.name) };
      delete job.kekPending;
      await writeVmJob(files.dir, job);
    }
    const record = job;
    const kekRef = record.kek!;
    const kek: LockerSpec = { kind: 'provider', provider, keyId: kekRef.keyId };
    const isVmKek = (l: LockerInfo): boolean => l.kind === 'provider' && l.providerId === kekRef.providerId && l.keyId === kekRef.keyId;
    // Shallow: add the VM KEK's locker (unless there) and drop every other provider locker.
    const removeOld = (l: LockerInfo): boolean => l.kind === 'provider' && !isVmKek(l);
    const cache = options.cache ?? keys.cache;
    const cacheOpt = cache ? { cache } : {};
    const deepLockers: LockerSpec[] = [
      kek,
      ...(recovery === 'keep' && keys.passphrase !== undefined ? [{ kind: 'passphrase' as const, passphrase: keys.passphrase }] : []),
    ];
    const steps: VmRekeyStep[] = [];
    const step = (s: VmRekeyStep): void => {
      steps.push(s);
      options.onStep?.(s);
    };
    for (const item of items) if (item.skip !== undefined) step({ kind: item.kind, path: item.path, action: 'skipped', detail: item.skip });
    for (const js of record.steps) {
      const kind = js.kind as VmRekeyItemKind;
      const path = stepPath(files.dir, js);
      if (js.done) {
        step({ kind, path, action: 'already done' });
        continue;
      }
      const add = describeKeySafe(await keySafeOf(kind, path, files.dir)).some(isVmKek) ? [] : [kek];
      let detail: string | undefined;
      if (kind === 'disk') {
        if (mode === 'shallow') await shallowRekey(path, { keys, addLockers: add, removeLockers: removeOld, ...cacheOpt });
        else await deepRekey(path, { keys, lockers: deepLockers, ...cacheOpt });
      } else if (kind === 'state') {
        if (mode === 'shallow') await rewrapStateFile(path, { keys, add, remove: removeOld, ...cacheOpt });
        else await reencryptStateFile(path, { keys, lockers: deepLockers, ...cacheOpt });
      } else if (kind === 'tpm') {
        // Both modes rewrap: swtpm cannot re-encrypt its state under a new key in place.
        const remove = mode === 'deep' && recovery === 'remove' ? (l: LockerInfo) => removeOld(l) || l.kind === 'passphrase' : removeOld;
        await rewrapVmTpmKey(files.dir, { keys, add, remove, ...cacheOpt });
        if (mode === 'deep') detail = 'state key rewrapped, not rotated';
      } else if (mode === 'shallow') await rewrapVmxFile(path, { keys, add, remove: removeOld, ...cacheOpt });
      else await reencryptVmxFile(path, { keys, lockers: deepLockers, ...cacheOpt });
      js.done = true;
      await writeVmJob(files.dir, record);
      step({ kind, path, action: 'rekeyed', ...(detail ? { detail } : {}) });
    }
    await removeVmJob(files.dir);
    return { mode, kek: { ...kekRef }, resumed, steps };
  } finally {
    lock.release();
  }
}
