/**
 * A live snapshot of a served disk (`NbdHost.snapshot`, `vmseal host snapshot`): the export is
 * switched to a new child layer without its clients noticing. Through Export.replaceDisk: new writes
 * wait, the writes in flight finish and the disk is flushed (the frozen layer holds exactly the
 * writes acknowledged before, durably); then, reads still going on against the old disk,
 *
 *  1. the child is made on the open disk (src/disk snapshotOpenDisk: same DEK, a new layer id): the
 *     parent is made 0444 under the export's own exclusive lock, which is then traded for a shared
 *     one — the child's open takes a shared lock on its parent, which an exclusive one refuses;
 *  2. the child's lock is taken (exclusive, with qemu's lock bytes);
 *  3. the chain ending at the child is opened (its checks: CIDs, layer ids, authenticators), which
 *     holds its own shared lock on the parent from then on;
 *
 * and the export switches to it, the requests held back running against it. A failure at any step
 * undoes the steps before (the child removed, the parent writable again and locked exclusively again)
 * and the export goes on serving the old disk, which stayed open throughout.
 */
import { openDisk, type EncryptedDisk } from '../disk/index.js';
import { snapshotOpenDisk } from '../disk/snapshot.js';
import type { UnlockOptions } from '../keys/index.js';
import { acquireLock, type DiskLock } from '../pipeline/lock.js';
import type { VirtualDisk } from '../vmdk/index.js';
import { removeNewSnapshot } from '../vmdk/snapshot.js';
import type { Export, Replacement } from './export.js';

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
export function snapshotExport(exp: Export, options: LiveSnapshotOptions): Promise<LiveSnapshotResult> {
  return exp.replaceDisk(async (old, oldLock, keepLock): Promise<Replacement<LiveSnapshotResult>> => {
    const parent = old.path;
    const keys = old.encrypted ? await options.keysFor(parent) : undefined;
    /** The parent's lock while the child is made and opened: the export's own, or after step 1 a shared one. */
    let parentLock: DiskLock | undefined = oldLock;
    let top: string | undefined;
    let childLock: DiskLock | undefined;
    try {
      top = await snapshotOpenDisk(old, {
        ...(keys ? { keys } : {}),
        ...(options.name !== undefined ? { name: options.name } : {}),
        yieldHeldLock: async () => {
          // Released, then taken shared at once: nothing writes the parent meanwhile (its files are 0444 now).
          await parentLock?.release();
          parentLock = undefined;
          parentLock = await acquireLock(parent, 'serve (snapshot parent)', 'shared');
        },
      });
      childLock = await acquireLock(top, 'serve', 'exclusive');
      const childKeys = old.encrypted ? await options.keysFor(top) : undefined;
      const disk: VirtualDisk | EncryptedDisk = await openDisk(top, { ...(childKeys ? { keys: childKeys } : {}) });
      // The chain holds its own shared lock on the parent now.
      if (parentLock !== oldLock) await parentLock?.release();
      return { disk, lock: childLock, result: { parent, top } };
    } catch (err) {
      await childLock?.release();
      if (top !== undefined) await undo(exp.name, parent, top, options.log);
      if (parentLock !== oldLock) {
        await parentLock?.release();
        keepLock(await relock(exp.name, parent, oldLock?.mode ?? 'exclusive', options.log));
      }
      throw err;
    }
  });
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
