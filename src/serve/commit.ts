/**
 * A live snapshot commit of a served chain (`NbdHost.commit`, `vmseal host commit`, the last step
 * of `vmseal host backup`): the top layer, which received the writes since a live snapshot, is
 * merged back into its parent and the export switches to the parent, as VMware's consolidation
 * does while the VM runs. Through Export.replaceDisk:
 *
 *  0. (before writes are held back) an encrypted chain's DEK is unlocked with the host's keys
 *     (src/disk prepareSnapshot), so no KDF or KMS round trip stalls the clients;
 *  1. new writes wait, the writes in flight finish, the chain is flushed; reads go on. The commit is
 *     planned on it (src/pipeline/commit.ts planHeldCommit: every check of a CLI commit, the
 *     parent's final descriptor and data check), and the chunks the child holds are added to the
 *     parent's change bitmap, if it has a valid one (see carryChanges);
 *  2. the open chain gives up its shared lock on the parent (ChainDisk.releaseParentLock), which
 *     would keep an exclusive one out, and the parent's lock is taken exclusively. The export keeps
 *     the child's exclusive lock throughout, so no other process can open the chain for writing;
 *  3. the journaled commit runs (the same code and journal as `vmseal snapshot commit`): the child's
 *     grains are copied into the parent, the parent's descriptor made final, the child removed.
 *     Reads go on meanwhile, through the chain still open (see lockParent: they read the merged view);
 *  4. reads wait too and the chain is closed; the parent is opened with the DEK of step 0, under its
 *     lock (the export's from now on); its change bitmap is written clean; the child's lock is released;
 *
 * and the requests held back run against the parent. Writes wait for steps 1 to 4: a time that
 * grows with the data written to the child since the snapshot (step 3 copies it); reads only for
 * step 4 and the flush of step 1.
 *
 * Failures: before the journal is written (a reader holds the parent, another snapshot of the
 * parent exists, the key is gone …) the chain is opened again and served, unchanged. Once it is
 * written, a failure (a full file system …) or a SIGKILL leaves the chain refused with
 * ERR_INTERRUPTED_JOB, exactly like an interrupted `vmseal snapshot commit`: `vmseal resume CHILD`
 * finishes it. The export then fails every request (EIO) until it is detached.
 */
import { rm } from 'node:fs/promises';
import { changeBitmapPath, markChanged, readChangeBitmap, writeChangeBitmap, type ChangeBase } from '../backup/change-bitmap.js';
import { prepareSnapshot } from '../disk/snapshot.js';
import type { UnlockOptions } from '../keys/index.js';
import { planHeldCommit, type CommitResult } from '../pipeline/commit.js';
import { acquireLock, type DiskLock } from '../pipeline/lock.js';
import { ChainDisk, openDisk as openVmdk, ownRanges } from '../vmdk/index.js';
import type { Export, ReplaceControl, Replacement, ServedDisk } from './export.js';
import { ServeError } from './errors.js';
import { StateFileDisk } from './vars-export.js';

export interface LiveCommitOptions {
  /** The key options of a disk path (the host's `keys`); undefined for plain disks. */
  keysFor(path: string): Promise<UnlockOptions | undefined>;
  log(line: string): void;
}

export interface LiveCommitResult {
  /** The parent, served from now on. */
  top: string;
  /** The child that was merged and removed. */
  removed: string;
  /** Bytes of the virtual disk copied from the child into the parent. */
  bytesMoved: number;
  /** How long writes were held back (steps 1 to 4), in milliseconds. */
  heldMs: number;
}

/** Merge the top of the chain `exp` serves into its parent, live; see the top of this file. */
export async function commitExport(exp: Export, options: LiveCommitOptions): Promise<LiveCommitResult> {
  const current = exp.disk;
  if (current instanceof StateFileDisk) {
    throw new ServeError('ERR_SERVE_EXPORT', `export ${exp.name} serves the state file ${current.path} (UEFI variables), which has no snapshots`);
  }
  const prepared = await prepareSnapshot(current, current.encrypted ? await options.keysFor(current.path) : undefined);
  try {
    const committed = await exp.replaceDisk(async (old, childLock, keepLock, control) => {
      const held = performance.now();
      if (old instanceof StateFileDisk) throw new ServeError('ERR_SERVE_EXPORT', `export ${exp.name} serves a state file, which has no snapshots`);
      const planned = await planHeldCommit(old.path, { dek: prepared.dek });
      try {
        const changes = await carryChanges(planned.parent, planned.top, old.capacity);
        const parentLock = await lockParent(old, planned.parent, control, () => prepared.open(old.path));
        let done: CommitResult;
        try {
          done = await planned.run();
        } catch (err) {
          await control.closeOld();
          await parentLock.release();
          // Once the journal is written the chain is refused (ERR_INTERRUPTED_JOB): the export then has no disk.
          control.fallback(await prepared.open(old.path).catch(() => undefined));
          throw err;
        }
        options.log(`export ${exp.name}: committed ${done.removed} into ${done.top} (${done.bytesMoved} bytes)`);
        // Step 4: reads wait now, and the chain (whose child's files are gone) is closed.
        await control.closeOld();
        const disk = await openCommitted(planned.parent, childLock, control, async () => {
          try {
            return await prepared.open(planned.parent);
          } catch (err) {
            keepLock(parentLock); // the export's lock until it is detached
            throw err;
          }
        });
        if (changes) await saveChanges(exp.name, disk, changes, options.log);
        const result = { top: done.top, removed: done.removed, bytesMoved: done.bytesMoved, heldMs: Math.round(performance.now() - held) };
        return { disk, lock: parentLock, result } satisfies Replacement<LiveCommitResult>;
      } finally {
        planned.dispose();
      }
    });
    // The merged child was tracked (the top of a chain is): its bitmap, written dirty at its first
    // write and clean at the switch, names files that are gone.
    await rm(changeBitmapPath(committed.removed), { force: true }).catch(() => undefined);
    return committed;
  } finally {
    prepared.dispose();
  }
}

/**
 * The chain a served disk reads through (an encrypted disk's inner disk), when reads may go on
 * through it during the commit: its top must be one file (monolithicSparse, as every live snapshot's
 * child). A top of many extent files (a qemu-img twoGbMaxExtentSparse child) has handles that its
 * pool may close and reopen by name (src/vmdk/file.ts), which fails once the commit removed them.
 */
function readableChainOf(disk: ServedDisk): ChainDisk | undefined {
  const chain = disk instanceof ChainDisk ? disk : disk instanceof StateFileDisk || !disk.encrypted ? undefined : disk.innerDisk;
  return chain instanceof ChainDisk && chain.top.subformat === 'monolithicSparse' ? chain : undefined;
}

/**
 * Step 2: the chain gives up its shared lock on the parent, staying open, and the parent's lock is
 * taken exclusively (the export keeps the child's lock). Reads go on through the chain during the
 * copy of step 3, and read the merged view: the commit writes into the parent only the grains the
 * child holds, which the chain resolves in the child (its files stay open even once removed), and
 * leaves every other grain of the parent as it is (a top of several files: reads wait, see
 * readableChainOf). If the lock cannot be had, the chain is closed,
 * opened again (with its locks) and served (`reopen`), and the error thrown.
 */
async function lockParent(old: ServedDisk, parent: string, control: ReplaceControl, reopen: () => Promise<ServedDisk>): Promise<DiskLock> {
  const chain = readableChainOf(old);
  if (chain) chain.releaseParentLock();
  else await control.closeOld(); // reads wait for the whole commit; the chain's locks go with it
  try {
    return await acquireLock(parent, 'serve (snapshot commit)', 'exclusive');
  } catch (err) {
    // ERR_DISK_BUSY naming the holder (a backup reading the frozen layer …): the chain is served again.
    await control.closeOld();
    control.fallback(await reopen().catch(() => undefined));
    throw err;
  }
}

/** Step 4: open the committed parent under its lock (held exclusively, so the open takes none of its own), then give the child's lock up. */
async function openCommitted(parent: string, childLock: DiskLock | undefined, control: ReplaceControl, open: () => Promise<ServedDisk>): Promise<ServedDisk> {
  let disk: ServedDisk;
  try {
    disk = await open();
  } catch (err) {
    // Committed, but not openable: nothing to serve (the export keeps the parent's lock until detached).
    control.fallback(undefined);
    await childLock?.release();
    throw new ServeError('ERR_SERVE_EXPORT', `the snapshot was committed into ${parent}, but it could not be opened again: ${(err as Error).message}`, {
      cause: err,
    });
  }
  await childLock?.release();
  return disk;
}

interface CarriedChanges {
  base: ChangeBase | null;
  bits: Buffer;
}

/**
 * The parent's change bitmap after the commit: its bits (the chunks changed since its base point,
 * up to the snapshot; none when a backup of the frozen parent just made it its base) plus the
 * chunks the child holds (the writes since the snapshot). Only when the parent's bitmap is valid
 * now (clean, of the parent as it is); otherwise nothing, and the commit, which changes the
 * parent, leaves the old file stale: the next backup reads everything.
 */
async function carryChanges(parent: string, top: string, capacity: number): Promise<CarriedChanges | undefined> {
  const layer = await openVmdk(parent, { readOnly: true, allowEncrypted: true, layerOnly: true });
  let read: Awaited<ReturnType<typeof readChangeBitmap>>;
  try {
    read = await readChangeBitmap(layer);
  } finally {
    await layer.close();
  }
  if (!('bitmap' in read)) return undefined;
  const { bits, base } = read.bitmap;
  const child = await openVmdk(top, { readOnly: true, allowEncrypted: true, layerOnly: true });
  try {
    for await (const r of ownRanges(child)) markChanged(bits, capacity, r.offset, r.length);
  } finally {
    await child.close();
  }
  return { base, bits };
}

/** Write the carried bitmap clean for the committed parent, before any write to it; a failure only costs the next backup a full read. */
async function saveChanges(name: string, disk: ServedDisk, changes: CarriedChanges, log: (line: string) => void): Promise<void> {
  try {
    await writeChangeBitmap(disk, changes.base, changes.bits);
  } catch (err) {
    log(
      `export ${name}: the change bitmap ${changeBitmapPath(disk.path)} could not be written (${(err as Error).message}): the next backup reads the whole disk`,
    );
  }
}
