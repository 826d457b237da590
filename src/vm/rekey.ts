/**
 * `vm rekey`: a whole VM onto a new VM KEK, as one journaled job across its files.
 *
 *   shallow  every key of the VM stays and is locked anew under the new VM KEK: each disk's KeySafe
 *            (every layer of a snapshot chain), each encrypted state file's header, the vTPM state
 *            key in the manifest, the .vmx's config key. The other provider lockers are removed;
 *            recovery-passphrase lockers stay (they lock the same keys).
 *   deep     new keys: each disk re-encrypted under a new DEK (the disk deep rekey, copy mode), each
 *            state file under a new file key, the .vmx under a new config key, all locked by the new
 *            VM KEK. The vTPM state key is only rewrapped, not rotated (swtpm cannot re-encrypt its
 *            state in place). Recovery-passphrase lockers are kept (re-made with the passphrase given)
 *            or removed, as the caller says: a deep rekey never keeps one silently.
 *
 * The job: the new VM KEK is made (or `keyId` taken) first and recorded, with the mode, in a journal
 * `DIR/vmseal-vm-rekey.json` written atomically before any file changes; each file's rekey is atomic
 * by itself (a rename, or the disk layer's journal), and the journal lists the files done so far.
 * Order: disks, state files, the vTPM key, the .vmx last. A run that finds the journal (a killed
 * run) continues it with the recorded KEK and mode, skipping the files it lists — a file rekeyed
 * whose line did not reach the journal is rekeyed again, which a shallow rekey does idempotently and
 * a deep one does twice, harmlessly. The journal is removed at the end. The folder's lock record
 * (`vmseal-vm-rekey.json.vmseal-lock`) keeps two runs apart.
 */
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { describeKeySafe, type KeyCache, type KeyProvider, type LockerInfo, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { readEncryptionParams } from '../disk/index.js';
import { deepRekey, shallowRekey } from '../pipeline/index.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { acquireFileLock, FileLockError, lockRecordPathFor } from '../util/lock.js';
import { VmError } from './errors.js';
import { listVmFolder, type VmFolderFiles } from './folder-files.js';
import { readManifest } from './manifest.js';
import { refuseMixedVm } from './mixed.js';
import { readStateFileHeader, rewrapStateFile } from './state-file.js';
import { reencryptStateFile } from './state-file-rekey.js';
import { rewrapVmTpmKey } from './tpm.js';
import { VMX_KEYSAFE_KEY } from './vmx-crypt.js';
import { VmxFile } from './vmx-file.js';
import { readVmxFile } from './vmx-io.js';
import { reencryptVmxFile, rewrapVmxFile } from './vmx-rekey.js';

export const VM_REKEY_JOURNAL = 'vmseal-vm-rekey.json';

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

interface JournalRecord {
  format: 'vmseal-vm-rekey';
  version: 1;
  mode: 'shallow' | 'deep';
  providerId: string;
  keyId: string;
  recoveryPassphrase?: 'keep' | 'remove';
  started: string;
  /** Items done, as `<kind>:<path>`. */
  done: string[];
}

interface Item {
  kind: VmRekeyItemKind;
  path: string;
  /** The KeySafe now (to check lockers before starting); undefined for a skipped item. */
  keySafe?: string;
  skip?: string;
}

function jobError(message: string, file?: string): VmError {
  return new VmError('ERR_VM_REKEY', message, { file });
}

async function readJournal(path: string): Promise<JournalRecord | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  let j: Partial<JournalRecord>;
  try {
    j = JSON.parse(text) as Partial<JournalRecord>;
  } catch {
    throw jobError(`${path} is not a vm rekey journal (not JSON): remove it only if no vm rekey of this VM was interrupted`, path);
  }
  if (
    j.format !== 'vmseal-vm-rekey' ||
    j.version !== 1 ||
    (j.mode !== 'shallow' && j.mode !== 'deep') ||
    typeof j.providerId !== 'string' ||
    typeof j.keyId !== 'string' ||
    !Array.isArray(j.done)
  ) {
    throw jobError(`${path} is not a vm rekey journal vmseal can read`, path);
  }
  return j as JournalRecord;
}

/** The VM's files to rekey, in the job's order, from the folder listing. */
async function itemsOf(files: VmFolderFiles, mode: 'shallow' | 'deep'): Promise<Item[]> {
  const items: Item[] = [];
  for (const d of files.disks) {
    if (d.state === 'plain') items.push({ kind: 'disk', path: d.path, skip: 'not encrypted' });
    else if (d.state === 'vmware') items.push({ kind: 'disk', path: d.path, skip: 'encrypted by VMware (not readable by vmseal)' });
    else if (d.state !== 'vmseal')
      throw jobError(`the disk ${d.path} is ${d.state}${d.detail ? ` (${d.detail})` : ''}: the VM cannot be rekeyed as a whole`, d.path);
    else if (mode === 'deep' && d.layers.length > 1) {
      throw jobError(
        `the disk ${d.path} has snapshots (${d.layers.length} layers): a deep rekey of a snapshot chain is not done yet; commit or delete its snapshots, or rekey --shallow`,
        d.path,
      );
    } else {
      // Shallow: every layer's KeySafe (each layer carries its own copy of the chain's DEK).
      for (const layer of mode === 'shallow' ? d.layers : [d.path]) {
        const params = await readEncryptionParams(layer);
        if (!params) throw jobError(`the layer ${layer} of ${d.path} is not encrypted, unlike the disk: the chain is damaged`, layer);
        items.push({ kind: 'disk', path: layer, keySafe: params.keySafe });
      }
    }
  }
  for (const s of files.stateFiles) {
    if (!s.encrypted) items.push({ kind: 'state', path: s.path, skip: 'not encrypted' });
    else items.push({ kind: 'state', path: s.path, keySafe: (await readStateFileHeader(s.path)).keySafe });
  }
  if (files.kind === 'qemu') {
    const tpm = (await readManifest(files.dir)).tpm;
    if (tpm?.keySafe !== undefined) items.push({ kind: 'tpm', path: files.config, keySafe: tpm.keySafe });
  } else if (files.configEncrypted) {
    items.push({
      kind: 'config',
      path: files.config,
      keySafe: VmxFile.parse(await readVmxFile(files.config), files.config)
        .rawBytes(VMX_KEYSAFE_KEY)!
        .toString('latin1'),
    });
  }
  return items;
}

/** Rekey the VM folder `dir` (or its .vmx): see the top of this file. */
export async function rekeyVm(dir: string, options: RekeyVmOptions): Promise<RekeyVmResult> {
  if (options === null || typeof options !== 'object' || (options.mode !== 'shallow' && options.mode !== 'deep')) {
    throw new VmError('ERR_INVALID_ARGUMENT', "Expected { mode: 'shallow' | 'deep', keys, provider } for options");
  }
  const { keys, provider, mode } = options;
  const files = await listVmFolder(dir, { keys });
  if (options.allowMixed !== true) refuseMixedVm(files.dir, files.disks, 'rekey');
  const journalPath = join(files.dir, VM_REKEY_JOURNAL);
  let lock;
  try {
    lock = await acquireFileLock(lockRecordPathFor(journalPath), { mode: 'exclusive', record: { operation: 'vm rekey', tool: 'vmseal' } });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY')
      throw new VmError('ERR_VMX_BUSY', `the VM ${files.dir} is ${err.message}`, { file: files.dir, cause: err });
    throw err;
  }
  try {
    let journal = await readJournal(journalPath);
    if (journal) {
      if (journal.mode !== mode) {
        throw jobError(
          `a ${journal.mode} vm rekey of ${files.dir} was interrupted (${journalPath}): finish it with \`vmseal vm rekey --${journal.mode}\` first`,
          journalPath,
        );
      }
      if (journal.providerId !== provider.id || (options.keyId !== undefined && options.keyId !== journal.keyId)) {
        throw jobError(
          `the interrupted vm rekey of ${files.dir} locks the VM with key ${journal.keyId} of provider ${journal.providerId}, and this run asks for another key: run it again with that provider (and without --key-id, or with --key-id ${journal.keyId})`,
          journalPath,
        );
      }
    }
    const resumed = journal !== undefined;
    const items = await itemsOf(files, mode);
    const phrase = journal?.recoveryPassphrase ?? options.recoveryPassphrase;
    if (mode === 'deep') {
      const withPhrase = items.filter((i) => i.keySafe !== undefined && describeKeySafe(i.keySafe).some((l) => l.kind === 'passphrase'));
      if (withPhrase.length > 0 && phrase === undefined) {
        throw jobError(
          `a deep rekey makes new keys, and these files have a recovery passphrase: ${withPhrase.map((i) => i.path).join(', ')}; say whether to keep it (--keep-recovery-passphrase, with the passphrase given) or to remove it (--remove-recovery-passphrase)`,
        );
      }
      if (phrase === 'keep' && keys.passphrase === undefined) throw jobError('keeping the recovery passphrase needs it: give it (--passphrase-file …)');
    }
    if (!journal) {
      const keyId = options.keyId ?? (await provider.createKey({ name: `vm ${files.dir}` })).keyId;
      journal = {
        format: 'vmseal-vm-rekey',
        version: 1,
        mode,
        providerId: provider.id,
        keyId,
        ...(mode === 'deep' && phrase !== undefined ? { recoveryPassphrase: phrase } : {}),
        started: new Date().toISOString(),
        done: [],
      };
      await writeFileAtomic(journalPath, Buffer.from(`${JSON.stringify(journal, null, 2)}\n`), 0o600);
    }
    const record = journal;
    const kek: LockerSpec = { kind: 'provider', provider, keyId: record.keyId };
    const isVmKek = (l: LockerInfo): boolean => l.kind === 'provider' && l.providerId === record.providerId && l.keyId === record.keyId;
    // Shallow: add the VM KEK's locker (unless there) and drop every other provider locker.
    const removeOld = (l: LockerInfo): boolean => l.kind === 'provider' && !isVmKek(l);
    const cache = options.cache ?? keys.cache;
    const cacheOpt = cache ? { cache } : {};
    const deepLockers: LockerSpec[] = [
      kek,
      ...(phrase === 'keep' && keys.passphrase !== undefined ? [{ kind: 'passphrase' as const, passphrase: keys.passphrase }] : []),
    ];
    const steps: VmRekeyStep[] = [];
    const step = (s: VmRekeyStep): void => {
      steps.push(s);
      options.onStep?.(s);
    };
    for (const item of items) {
      const id = `${item.kind}:${item.path}`;
      if (item.skip !== undefined) {
        step({ kind: item.kind, path: item.path, action: 'skipped', detail: item.skip });
        continue;
      }
      if (record.done.includes(id)) {
        step({ kind: item.kind, path: item.path, action: 'already done' });
        continue;
      }
      const add = describeKeySafe(item.keySafe!).some(isVmKek) ? [] : [kek];
      let detail: string | undefined;
      if (item.kind === 'disk') {
        if (mode === 'shallow') await shallowRekey(item.path, { keys, addLockers: add, removeLockers: removeOld, ...cacheOpt });
        else await deepRekey(item.path, { keys, lockers: deepLockers, ...cacheOpt });
      } else if (item.kind === 'state') {
        if (mode === 'shallow') await rewrapStateFile(item.path, { keys, add, remove: removeOld, ...cacheOpt });
        else await reencryptStateFile(item.path, { keys, lockers: deepLockers, ...cacheOpt });
      } else if (item.kind === 'tpm') {
        // Both modes: swtpm cannot re-encrypt its state under a new key in place.
        await rewrapVmTpmKey(files.dir, {
          keys,
          add,
          remove: mode === 'deep' && phrase === 'remove' ? (l) => removeOld(l) || l.kind === 'passphrase' : removeOld,
          ...cacheOpt,
        });
        if (mode === 'deep') detail = 'state key rewrapped, not rotated';
      } else if (mode === 'shallow') await rewrapVmxFile(item.path, { keys, add, remove: removeOld, ...cacheOpt });
      else await reencryptVmxFile(item.path, { keys, lockers: deepLockers, ...cacheOpt });
      record.done.push(id);
      await writeFileAtomic(journalPath, Buffer.from(`${JSON.stringify(record, null, 2)}\n`), 0o600);
      step({ kind: item.kind, path: item.path, action: 'rekeyed', ...(detail ? { detail } : {}) });
    }
    await rm(journalPath, { force: true });
    return { mode, kek: { providerId: record.providerId, keyId: record.keyId }, resumed, steps };
  } finally {
    lock.release();
  }
}
