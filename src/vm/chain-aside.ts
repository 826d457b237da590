/**
 * A disk's snapshot chain encrypted or decrypted as one: written aside, then moved over the chain.
 *
 * No in-place job takes a chain (every layer must end under ONE DEK with layer ids, docs/format.md
 * version 3), so the new chain is built in a staging folder beside the top, `.<top>.vmseal-chain-<op>/`,
 * with the same file names:
 *
 *   1. the base disk: a copy job (encryptDisk under the VM's lockers / decryptDisk), monolithicSparse;
 *   2. each child, from the bottom up: a new empty snapshot of the new parent (createEncryptedSnapshot:
 *      same DEK, its own layer id, the parent's as parentLayerId / the VMDK layer's createSnapshot),
 *      then the child's OWN ranges copied into it (src/pipeline/chain-rebuild.ts, the rule shared with
 *      the deep rekey of a chain);
 *   3. every staged file fsynced, then the record `commit` written: from here on the move always
 *      completes. The files are renamed over the old ones (the base first), the folder fsynced, and
 *      the staging folder removed.
 *
 * A crash before `commit` leaves the old chain untouched (the next run removes the staging folder
 * and starts again); after it, the next run finishes the renames. Needs room for a copy of the chain.
 * Layers must be single-file (monolithicSparse): a child's descriptor names its parent by file name,
 * which the move keeps. The new parents are left mode 0444, as `vmseal snapshot create` leaves them.
 */
import { mkdir, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KeyCache, LockerSpec, UnlockOptions } from '../keys/index.js';
import { createEncryptedSnapshot, openDisk } from '../disk/index.js';
import { decryptDisk, encryptDisk } from '../pipeline/index.js';
import { fsyncFile, rebuildChain } from '../pipeline/chain-rebuild.js';
import { createSnapshot, openDisk as openVmdk } from '../vmdk/index.js';
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

/** Rename every staged layer over its old file (base first: `order`), then remove the staging folder. */
async function moveOver(stage: string, order: string[]): Promise<void> {
  const dir = dirname(stage);
  const staged = new Set(await readdir(stage));
  for (const name of order) if (staged.has(name)) await rename(join(stage, name), join(dir, name));
  await fsyncDir(dir);
  await rm(stage, { recursive: true, force: true });
  await fsyncDir(dir);
}

/** Refuse a chain whose layers are not single files (their extent names would not survive the move). */
export function checkChainMovable(top: string, layers: string[], files: string[]): void {
  if (files.length === layers.length) return;
  throw new VmError(
    'ERR_VM_SNAPSHOT',
    `${top} is a snapshot chain whose layers have extent files of their own; vm encrypt and vm decrypt move single-file layers (monolithicSparse) only: convert the chain first, or consolidate the snapshots`,
    { file: top },
  );
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
  if (await exists(record)) return moveOver(stage, (JSON.parse(await readFile(record, 'utf8')) as { files: string[] }).files);
  const bottomUp = [...layers].reverse();
  const order = bottomUp.map((l) => basename(l));
  await rm(stage, { recursive: true, force: true });
  await mkdir(stage, { mode: 0o700 });
  const { keys, signal } = options;
  const encrypting = options.operation === 'encrypt';
  const job = { subformat: 'monolithicSparse' as const, ...(signal ? { signal } : {}) };
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
  for (const name of order) await fsyncFile(join(stage, name));
  await createFileAtomic(join(stage, COMMIT), Buffer.from(`${JSON.stringify({ files: order })}\n`));
  await fsyncDir(stage);
  await moveOver(stage, order);
}
