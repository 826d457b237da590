/**
 * A live snapshot of a served disk (`NbdHost.snapshot`, `vmseal host snapshot`): the export is
 * switched to a new child layer without its clients noticing. Through Export.replaceDisk: new writes
 * wait, the writes in flight finish and the disk is flushed (the frozen layer holds exactly the
 * writes acknowledged before, durably); then, reads still going on against the old disk,
 *
 *  0. (before writes are held back) an encrypted disk's DEK is unlocked with the host's keys
 *     (src/disk prepareSnapshot): the open disk keeps none;
 *  1. the child is made on the open disk (PreparedSnapshot.take: same DEK, a new layer id), under
 *     the export's own exclusive lock: written aside under a temporary name, the parent made 0444,
 *     the child renamed into place (a server killed before the rename leaves a temporary file that
 *     the next open of the parent for writing undoes: src/vmdk/pending-snapshot.ts). The lock is then
 *     traded for a shared one — the child's open takes a shared lock on its parent, which an
 *     exclusive one refuses;
 *  2. the child's lock is taken (exclusive, with qemu's lock bytes);
 *  3. the chain ending at the child is opened with that DEK (its checks: CIDs, layer ids,
 *     authenticators), and holds its own shared lock on the parent from then on;
 *
 * and the export switches to it, the requests held back running against it. A failure at any step
 * undoes the steps before (the child removed, the parent writable again and locked exclusively again)
 * and the export goes on serving the old disk, which stayed open throughout.
 */
import { prepareSnapshot, type PreparedSnapshot } from '../disk/snapshot.js';
import type { UnlockOptions } from '../keys/index.js';
import { acquireLock, type DiskLock } from '../pipeline/lock.js';
import { removeNewSnapshot } from '../vmdk/snapshot.js';
import type { Export, Replacement, ServedDisk } from './export.js';
import { ServeError } from './errors.js';
import { StateFileDisk } from './vars-export.js';

/** A state file (UEFI variables) has no layers to snapshot. */
function refuseStateFile(disk: ServedDisk, name: string): asserts disk is Exclude<ServedDisk, StateFileDisk> {
  if (disk instanceof StateFileDisk) {
    throw new ServeError('ERR_SERVE_EXPORT', `export ${name} serves the state file ${disk.path} (UEFI variables), which has no snapshots`);
  }
}

export interface LiveSnapshotOptions {
  /** File name of the child (default VMware's `<base>-00000N.vmdk`). */
  name?: string;
  /** The key options of a disk path (the host's `keys`); undefined for plain disks. */
  keysFor(path: string): Promise<UnlockOptions | undefined>;
  log(line: string): void;
}

export interface LiveSnapshotResult {
  /** The layer frozen by the snapshot (the old top). */
  parent: string;
  /** The new top, served from now on. */
  top: string;
}

/** Switch `exp` to a new child of its disk; see the top of this file. */
export async function snapshotExport(exp: Export, options: LiveSnapshotOptions): Promise<LiveSnapshotResult> {
  // The DEK is unlocked before writes are held back: a KDF or a KMS round trip does not stall them.
  // Every layer of a disk shares it, so it fits whichever layer is the top when the replacement runs.
  const current = exp.disk;
  refuseStateFile(current, exp.name);
  const prepared = await prepareSnapshot(current, current.encrypted ? await options.keysFor(current.path) : undefined);
  try {
    return await exp.replaceDisk((old, oldLock, keepLock) => switchToChild(exp.name, prepared, old, oldLock, keepLock, options));
  } finally {
    prepared.dispose();
  }
}

/** Steps 1 to 3 of the top of this file, run while writes are held back. */
async function switchToChild(
  name: string,
  prepared: PreparedSnapshot,
  old: ServedDisk,
  oldLock: DiskLock | undefined,
  keepLock: (lock: DiskLock | undefined) => void,
  options: LiveSnapshotOptions,
): Promise<Replacement<LiveSnapshotResult>> {
  refuseStateFile(old, name);
  const parent = old.path;
  /** The parent's lock while the child is made and opened: the export's own, or after step 1 a shared one. */
  let parentLock: DiskLock | undefined = oldLock;
  let top: string | undefined;
  let childLock: DiskLock | undefined;
  try {
    top = await prepared.take(old, {
      ...(options.name !== undefined ? { name: options.name } : {}),
      yieldHeldLock: async () => {
        // Released, then taken shared at once: nothing writes the parent meanwhile (its files are 0444 now).
        await parentLock?.release();
        parentLock = undefined;
        parentLock = await acquireLock(parent, 'serve (snapshot parent)', 'shared');
      },
    });
    childLock = await acquireLock(top, 'serve', 'exclusive');
    const disk = await prepared.open(top);
    // The chain holds its own shared lock on the parent now.
    if (parentLock !== oldLock) await parentLock?.release();
    return { disk, lock: childLock, result: { parent, top } };
  } catch (err) {
    await childLock?.release();
    if (top !== undefined) await undo(name, parent, top, options.log);
    if (parentLock !== oldLock) {
      await parentLock?.release();
      keepLock(await relock(name, parent, oldLock?.mode ?? 'exclusive', options.log));
    }
    throw err;
  }
}

/** Remove the child and make the parent writable again; what cannot be undone is logged (the snapshot's error is what the caller sees). */
async function undo(name: string, parent: string, top: string, log: (line: string) => void): Promise<void> {
  try {
    await removeNewSnapshot(parent, top);
  } catch (err) {
    log(`export ${name}: undoing the snapshot ${top} failed: ${(err as Error).message}; remove it and make ${parent} writable (chmod u+w) by hand`);
  }
}

/** Take the parent's lock again (the export's lock from now on); undefined, and logged, if another process took it meanwhile. */
async function relock(name: string, parent: string, mode: DiskLock['mode'], log: (line: string) => void): Promise<DiskLock | undefined> {
  try {
    return await acquireLock(parent, 'serve', mode);
  } catch (err) {
    log(`export ${name}: its disk ${parent} could not be locked again (${(err as Error).message}): it is served without its lock`);
    return undefined;
  }
}
