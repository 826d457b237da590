import { stat } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { ChainDisk, chainError } from './chain.js';
import type { Descriptor } from './descriptor.js';
import type { VirtualDisk, VmdkDisk } from './disk.js';
import { VmdkFormatError, interruptedJob, jobOf } from './errors.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';

/** Most layers below a top (VMware allows 32 snapshots; qemu has no limit): a bound, not a target. */
export const MAX_CHAIN_DEPTH = 255;
const NO_PARENT = 'ffffffff';
/** createType values a snapshot child may have: a hosted sparse extent (one file or many), or ESX's delta disks (read only). */
export const CHILD_SUBFORMATS: readonly string[] = ['monolithicSparse', 'twoGbMaxExtentSparse', 'vmfsSparse', 'seSparse'];

/** A child's link to its parent, as its descriptor states it. */
export interface ParentLink {
  /** The parent's CID the child was made on (lowercase hex). */
  cid: string;
  /** parentFileNameHint as written. */
  hint: string;
}

/**
 * The parent link of a descriptor, undefined for a base disk. Refuses half links (a parentCID
 * without a hint or the reverse), hints with NUL, and children of a subformat that cannot be one.
 */
export function parentLink(d: Descriptor | undefined, file: string): ParentLink | undefined {
  if (!d) return undefined;
  const cid = d.get('parentCID')?.toLowerCase();
  const hint = d.get('parentFileNameHint');
  const hasCid = cid !== undefined && cid !== NO_PARENT;
  if (!hasCid && hint === undefined) return undefined;
  if (!CHILD_SUBFORMATS.includes(d.createType)) {
    throw new VmdkFormatError(
      'ERR_VMDK_UNSUPPORTED',
      `unsupported: a ${d.createType.slice(0, 40)} delta disk (snapshot children vmseal reads are ${CHILD_SUBFORMATS.join(' and ')})`,
      { file },
    );
  }
  if (!hasCid) throw chainError('the descriptor names a parent (parentFileNameHint) but its parentCID is ffffffff or missing', file);
  if (hint === undefined || hint === '') throw chainError(`the descriptor has parentCID=${cid} but no parentFileNameHint naming the parent file`, file);
  if (hint.includes('\0')) throw chainError('parentFileNameHint contains a NUL byte', file);
  return { cid, hint };
}

/** The parent's path: the hint relative to the child's folder (an absolute hint is taken as it is). */
export function parentPathOf(childPath: string, hint: string): string {
  return isAbsolute(hint) ? resolve(hint) : resolve(dirname(childPath), hint);
}

async function inode(path: string): Promise<string | undefined> {
  try {
    const s = await stat(path, { bigint: true });
    return s.isFile() ? `${s.dev}:${s.ino}` : undefined;
  } catch {
    return undefined;
  }
}

async function lockParent(path: string, child: string): Promise<FileLockHandle> {
  try {
    return await acquireFileLock(lockRecordPathFor(path), { mode: 'shared' });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new FileLockError('ERR_LOCK_BUSY', `the snapshot parent ${path} of ${child} is ${err.message}`, {
        file: err.file,
        holder: err.holder,
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * Open the parents of `top` (already open) down to the base disk and return the chain. Each parent
 * is opened read-only through `openLayer` and held by a shared vmseal lock (src/util/lock.ts) while
 * the chain is open, so no in-place job rewrites a layer under it; the top's own lock is its caller's
 * (src/pipeline/lock.ts), as for any disk. Checks, layer by layer: the parent exists, is a VMDK, is
 * not a layer met before (same inode: a loop), its CID is the child's parentCID (else
 * ERR_VMDK_PARENT_CHANGED: the parent was written after the child was made), the same capacity, and
 * both layers encrypted or both plain; a parent whose descriptor carries a job line (an unfinished
 * snapshot commit) is refused with ERR_INTERRUPTED_JOB. On failure every parent opened is closed; `top` is left to
 * the caller.
 */
export async function openParents(top: VmdkDisk, openLayer: (path: string) => Promise<VmdkDisk>): Promise<VirtualDisk> {
  const layers: VmdkDisk[] = [top];
  const locks: FileLockHandle[] = [];
  const releaseAll = (): void => {
    for (const l of locks.splice(0).reverse()) l.release();
  };
  try {
    const seen = new Set<string>();
    const first = await inode(top.path);
    if (first) seen.add(first);
    for (let child = top; ;) {
      const link = parentLink(child.descriptor, child.path);
      if (!link) break;
      if (layers.length > MAX_CHAIN_DEPTH) throw chainError(`the chain is deeper than ${MAX_CHAIN_DEPTH} layers`, top.path);
      const path = parentPathOf(child.path, link.hint);
      const key = await inode(path);
      if (key === undefined) {
        throw chainError(`the parent disk ${path} (parentFileNameHint "${link.hint.slice(0, 200)}") is missing or not a file`, child.path);
      }
      if (seen.has(key)) throw chainError(`the chain loops: the parent ${path} is a layer above it`, child.path);
      seen.add(key);
      locks.push(await lockParent(path, child.path));
      const parent = await openLayer(path);
      layers.push(parent);
      // A snapshot commit of this chain did not finish: the parent is half merged (its CID changed too).
      const job = jobOf(parent.descriptor);
      if (job !== undefined) throw interruptedJob(job, path);
      const cid = parent.descriptor?.get('CID')?.toLowerCase();
      if (parent.format !== 'vmdk' || cid === undefined) throw chainError(`the parent ${path} is not a VMDK disk with a CID`, child.path);
      // Compared as numbers: qemu writes CIDs without leading zeros, vmseal with.
      if (parseInt(cid, 16) !== parseInt(link.cid, 16)) {
        throw new VmdkFormatError(
          'ERR_VMDK_PARENT_CHANGED',
          `the parent changed after the snapshot was taken: ${child.path} was made on CID ${link.cid} of ${path}, which now has CID ${cid}`,
          { file: child.path },
        );
      }
      if (parent.capacity !== child.capacity) {
        throw chainError(`the parent ${path} has ${parent.capacity} bytes, the child ${child.capacity}`, child.path);
      }
      if (child.descriptor!.isEncrypted() !== (parent.descriptor?.isEncrypted() ?? false)) {
        const [enc, plain] = child.descriptor!.isEncrypted() ? [child.path, path] : [path, child.path];
        throw chainError(`layers of a chain are all encrypted or all plain: ${enc} is encrypted, ${plain} is not`, child.path);
      }
      child = parent;
    }
  } catch (err) {
    for (const l of layers.slice(1)) await l.close().catch(() => undefined);
    releaseAll();
    throw err;
  }
  let disk: VirtualDisk = layers[layers.length - 1];
  for (let i = layers.length - 2; i >= 0; i--) {
    disk = new ChainDisk(layers[i], disk, i === 0 ? { release: releaseAll, releaseParent: () => locks[0]?.release() } : { release: () => undefined });
  }
  return disk;
}
