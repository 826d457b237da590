/**
 * A disk's snapshot chain encrypted or decrypted as one: written aside, then moved over the chain.
 *
 * No in-place job takes a chain (every layer must end under ONE DEK with layer ids, docs/format.md
 * version 3), so the new chain is built in a staging folder beside the top, `.<top>.vmseal-chain-<op>/`,
 * with the same file names:
 *
 *   1. the base disk: a copy job (encryptDisk under the VM's lockers / decryptDisk) in the base's own
 *      subformat (monolithicSparse, monolithicFlat, twoGbMaxExtentSparse/Flat: the copy job writes
 *      each, its extent files named after the descriptor);
 *   2. each child, from the bottom up: a new empty snapshot of the new parent (createEncryptedSnapshot:
 *      same DEK, its own layer id, the parent's as parentLayerId / the VMDK layer's createSnapshot),
 *      then the child's OWN ranges copied into it (src/pipeline/chain-rebuild.ts, the rule shared with
 *      the deep rekey of a chain). The snapshot writer makes monolithicSparse children only: a split
 *      (twoGbMaxExtent…) or flat child becomes one monolithicSparse file under its descriptor's name
 *      (VMware and qemu read it; the .vmsd names descriptors only);
 *   3. every staged file fsynced, then the record `commit` written — the staged files (the base's
 *      first) and the old chain's files that no staged file replaces (extents of a split child, or
 *      of a base whose extents the copy job names otherwise) — and the folder fsynced: from here on
 *      the move always completes. The files are renamed over the old ones, the old extents left over
 *      are removed, the folder fsynced, and the staging folder removed.
 *
 * A crash before `commit` leaves the old chain untouched (the next run removes the staging folder
 * and starts again); after it, the next run finishes the renames and removals. Needs room for a copy
 * of the chain. Every file of the chain must be in the top's folder, since the move is by file name
 * (a child's descriptor names its parent, a descriptor its extents, by relative name), and no staged
 * name may be that of a file outside the chain. The new parents are left mode 0444, as `vmseal
 * snapshot create` leaves them.
 */
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KeyCache, LockerSpec, UnlockOptions } from '../keys/index.js';
import { createEncryptedSnapshot, openDisk } from '../disk/index.js';
import { decryptDisk, encryptDisk } from '../pipeline/index.js';
import { fsyncFile, rebuildChain } from '../pipeline/chain-rebuild.js';
import { ChainDisk, createSnapshot, openDisk as openVmdk } from '../vmdk/index.js';
import { createFileAtomic, fsyncDir } from '../util/atomic-file.js';
import { VmError } from './errors.js';

const COMMIT = 'commit';

export interface ChainJobOptions {
  operation: 'encrypt' | 'decrypt';
  /** encrypt: the VM's lockers. */
  lockers?: LockerSpec[];
  /** Opens the chain (decrypt) or the new chain (encrypt). */
  keys: UnlockOptions;
  cache?: KeyCache;
  signal?: AbortSignal;
}

/**
 * The staging folder of `operation` for the chain whose top is `top`. The operation is in the name:
 * a committed folder that an encryption left (its removal lost in a crash) must never be moved over
 * the chain by a later decryption.
 */
export function chainStagePath(top: string, operation: ChainJobOptions['operation']): string {
  return join(dirname(top), `.${basename(top)}.vmseal-chain-${operation}`);
}

/** Whether an earlier run of `operation` left a staging folder for the chain of `top`. */
export async function hasChainStage(top: string, operation: ChainJobOptions['operation']): Promise<boolean> {
  return exists(chainStagePath(top, operation));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** The commit record: names in the chain's folder. `remove` is absent in records of older versions. */
interface CommitRecord {
  files: string[];
  remove?: string[];
}

/**
 * Rename every staged file over its old one (base first: `files`), remove the old chain's files no
 * staged one replaced, then the staging folder. Idempotent: a run killed in here is finished by the next.
 */
async function moveOver(stage: string, record: CommitRecord): Promise<void> {
  const dir = dirname(stage);
  const staged = new Set(await readdir(stage));
  for (const name of record.files) if (staged.has(name)) await rename(join(stage, name), join(dir, name));
  for (const name of record.remove ?? []) await rm(join(dir, name), { force: true });
  await fsyncDir(dir);
  await rm(stage, { recursive: true, force: true });
  await fsyncDir(dir);
}

/** The layer subformats a chain job takes: the copy job writes each as a base; a child becomes monolithicSparse. */
const MOVABLE_SUBFORMATS: ReadonlySet<string> = new Set(['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']);

/**
 * Refuse, before anything changes, a chain the job cannot move over itself: a layer in another
 * subformat (vmfs, seSparse, streamOptimized…: the copy job or the snapshot writer does not make it
 * with the same file names), or a file of the chain outside the top's folder (the move is by name).
 */
export async function checkChainMovable(top: string, files: string[]): Promise<void> {
  const refuse = (why: string) =>
    new VmError(
      'ERR_VM_SNAPSHOT',
      `${top} is a snapshot chain ${why}; vm encrypt and vm decrypt rewrite a chain of monolithicSparse, monolithicFlat and twoGbMaxExtentSparse/Flat layers in its own folder only: convert the chain first (vmseal convert), or consolidate the snapshots`,
      { file: top },
    );
  const outside = files.find((f) => dirname(f) !== dirname(top));
  if (outside !== undefined) throw refuse(`with a file outside its folder (${outside})`);
  const chain = await openVmdk(top, { readOnly: true, allowEncrypted: true });
  try {
    const layers = chain instanceof ChainDisk ? chain.layers() : [chain];
    const odd = layers.find((l) => !MOVABLE_SUBFORMATS.has(l.subformat));
    if (odd) throw refuse(`whose layer ${odd.path} is ${odd.subformat}`);
  } finally {
    await chain.close();
  }
}

/** The names of every file of the chain whose top is `top`. */
async function chainFileNames(top: string): Promise<string[]> {
  const chain = await openVmdk(top, { readOnly: true, allowEncrypted: true });
  try {
    return chain.files().map((f) => basename(f));
  } finally {
    await chain.close();
  }
}

/**
 * Encrypt or decrypt the chain `layers` (top first, as listVmFolder gives it) as described above.
 * A move an earlier run had committed is finished from its record instead (then only `layers[0]`,
 * the top, is used: the chain may be half moved).
 */
export async function runChainJob(layers: string[], options: ChainJobOptions): Promise<void> {
  const top = layers[0]!;
  // The other operation's folder is a finished job's (the VM's job file names one operation at a time).
  await rm(chainStagePath(top, options.operation === 'encrypt' ? 'decrypt' : 'encrypt'), { recursive: true, force: true });
  const stage = chainStagePath(top, options.operation);
  const record = join(stage, COMMIT);
  if (await exists(record)) return moveOver(stage, JSON.parse(await readFile(record, 'utf8')) as CommitRecord);
  const bottomUp = [...layers].reverse();
  const layerNames = bottomUp.map((l) => basename(l));
  const oldFiles = await chainFileNames(top);
  await rm(stage, { recursive: true, force: true });
  await mkdir(stage, { mode: 0o700 });
  const { keys, signal } = options;
  const encrypting = options.operation === 'encrypt';
  // No subformat: the copy job keeps the base's (docs/vm.md, "Snapshot chains").
  const job = signal ? { signal } : {};
  // The layer-by-layer rule (structure kept, own ranges copied) is the pipeline's (chain-rebuild.ts).
  await rebuildChain(bottomUp, stage, {
    makeBase: async (from, to) => {
      if (encrypting) await encryptDisk(from, to, { ...job, lockers: options.lockers!, ...(options.cache ? { cache: options.cache } : {}) });
      else await decryptDisk(from, to, { ...job, keys });
    },
    makeChild: (parent, name) => (encrypting ? createEncryptedSnapshot(parent, { keys, name }) : createSnapshot(parent, { name })),
    // The old chain up to this layer (plain, or opened with the keys); the new layer the other way round.
    openOld: (layer) => (encrypting ? openVmdk(layer, { readOnly: true, allowEncrypted: true }) : openDisk(layer, { keys, readOnly: true })),
    openNew: (layer) => (encrypting ? openDisk(layer, { keys }) : openVmdk(layer)),
    signal,
  });
  // The base's extent files first (the names that are not layers'), then the layers bottom up.
  // (Named from the new chain itself, not the folder: lock records may lie there too.)
  const stagedNames = await chainFileNames(join(stage, basename(top)));
  const files = [...stagedNames.filter((n) => !layerNames.includes(n)), ...layerNames];
  for (const taken of files) {
    if (oldFiles.includes(taken) || !(await exists(join(dirname(top), taken)))) continue;
    throw new VmError(
      'ERR_VM_SNAPSHOT',
      `the new chain of ${top} would replace ${taken}, a file that is not part of the chain: move that file away, then run the command again`,
      {
        file: top,
      },
    );
  }
  for (const name of files) await fsyncFile(join(stage, name));
  const commit: CommitRecord = { files, remove: oldFiles.filter((n) => !files.includes(n)) };
  await createFileAtomic(join(stage, COMMIT), Buffer.from(`${JSON.stringify(commit)}\n`));
  await fsyncDir(stage);
  await moveOver(stage, commit);
}
