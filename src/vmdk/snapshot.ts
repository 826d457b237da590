import { rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, relative, resolve } from 'node:path';
import { ChainDisk, chainError } from './chain.js';
import { parentLink, parentPathOf } from './chain-open.js';
import { ADAPTER_TYPES, createChildFile, createDiskNamed } from './create.js';
import type { VirtualDisk } from './disk.js';
import { VmdkFormatError, ioError } from './errors.js';
import { openDisk } from './open.js';
import { pendingChildPath, setWritable, undoUnfinishedSnapshot } from './pending-snapshot.js';
import { isReadOnlySubformat, readOnlySubformatError } from './read-only-formats.js';
import { expected } from '../errors.js';
import { fsyncDir } from '../util/atomic-file.js';
import { acquireFileLock, lockRecordPathFor } from '../util/lock.js';

export interface CreateSnapshotOptions {
  /** File name of the new child in the disk's folder (`.vmdk` added if missing); default VMware's `<base>-00000N.vmdk`. */
  name?: string;
  /** Extra descriptor lines of the child (src/disk passes an encrypted child's lines here). */
  descriptorLines?: Array<[key: string, value: string]>;
  /**
   * The caller holds the disk's vmseal lock exclusively already (a server taking a snapshot of the
   * disk it serves; src/disk, which locks before it rewrites the descriptor), so it is not taken
   * again (that would conflict with the caller's own). Called where createSnapshot would release its
   * own lock: once the child is in place, before anyone opens it — the child's chain takes a shared
   * lock on its parent, which the caller's exclusive one would refuse. The caller releases or
   * downgrades its lock there; if this throws, the snapshot is taken back (child removed, disk
   * writable again).
   */
  yieldHeldLock?: () => Promise<void>;
}

/** VMware's child names: `<base>-000001.vmdk`, `-000002`, … where `<base>` is the base disk's name. */
const CHILD_NAME = /^(.*)-(\d{6})$/;

/** The first free `<base>-00000N.vmdk` beside `diskPath` (`<base>` without any -00000N of the disk's own name). */
export async function nextSnapshotName(diskPath: string): Promise<string> {
  const stem = basename(diskPath, extname(diskPath));
  const base = CHILD_NAME.exec(stem)?.[1] ?? stem;
  for (let n = 1; n < 1_000_000; n++) {
    const candidate = join(dirname(diskPath), `${base}-${String(n).padStart(6, '0')}.vmdk`);
    if (!(await exists(candidate))) return candidate;
  }
  throw chainError('no free snapshot name is left (999,999 taken)', diskPath);
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

function checkName(name: unknown, diskPath: string): string {
  if (typeof name !== 'string' || name === '' || /[/\\\0"\r\n]/.test(name) || name === '.' || name === '..') {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a file name without a folder, quotes, CR, LF or NUL', 'options.name', name));
  }
  return join(dirname(diskPath), extname(name).toLowerCase() === '.vmdk' ? name : `${name}.vmdk`);
}

/** The layer at the top of `disk` (the disk itself when it is not a chain). */
function topLayer(disk: VirtualDisk): VirtualDisk {
  return disk instanceof ChainDisk ? disk.top : disk;
}

interface ChildPlan {
  capacity: number;
  grainSize: number;
  cid: string;
  adapterType: (typeof ADAPTER_TYPES)[number] | undefined;
  hwVersion: string | undefined;
}

/** What a child of `disk` (open, the chain it ends) needs from it; refuses disks that cannot be parents. */
function planChild(disk: VirtualDisk, descriptorLines: Array<[string, string]> | undefined): ChildPlan {
  const d = disk.descriptor;
  const cid = d?.get('CID')?.toLowerCase();
  if (disk.format !== 'vmdk' || !d || cid === undefined || cid === 'fffffffe') {
    throw chainError('only a VMDK disk with its own descriptor can have snapshots (convert a raw image, open a split disk by its descriptor)', disk.path);
  }
  if (d.isEncrypted() !== (descriptorLines ?? []).some(([k]) => k.startsWith('encryption.'))) {
    throw chainError(
      d.isEncrypted() ? 'an encrypted disk gets encrypted snapshots: take them with keys (src/disk createSnapshot)' : 'a plain disk gets plain snapshots',
      disk.path,
    );
  }
  const adapter = d.get('ddb.adapterType');
  const hw = d.get('ddb.virtualHWVersion');
  return {
    capacity: disk.capacity,
    // The parent's grain when it is sparse, so grains line up layer to layer; else qemu's 64 KiB.
    grainSize: disk.grainSize ?? 65536,
    cid,
    adapterType: (ADAPTER_TYPES as readonly string[]).includes(adapter ?? '') ? (adapter as (typeof ADAPTER_TYPES)[number]) : undefined,
    hwVersion: hw !== undefined && /^[1-9][0-9]{0,2}$/.test(hw) ? hw : undefined,
  };
}

/**
 * Take a snapshot of the disk at `diskPath` (a base disk or the top of a chain): make a new empty
 * monolithicSparse child on it and return the child's path. From then on the disk is a read-only
 * layer (its files get mode 0444) and the child is what is written. Under the disk's vmseal lock,
 * held exclusively throughout (docs/vmdk.md, "Making and reverting snapshots"):
 *
 *  1. the disk is read (its CID, its files), and a snapshot of it that a crash cut short is undone
 *     (pending-snapshot.ts);
 *  2. the child is written aside, under its temporary name beside the disk (its extent line naming
 *     the final name), fsynced, and the folder fsynced: the marker of an unfinished snapshot is
 *     durable before anything else changes;
 *  3. the disk's files are made read-only (before the child exists: a layer is never writable while
 *     it has a child);
 *  4. the child is renamed to its final name and the folder fsynced: the snapshot is made.
 *
 * A crash before 4 leaves the temporary file, which the next writable open, serve or snapshot of the
 * disk removes, making the disk writable again; after 4, a whole child. The child is not opened
 * here: its chain's open takes a shared lock on the disk, which the exclusive one refuses — the lock
 * is released (or yielded to a caller holding it, who trades it for a shared one) after step 4.
 */
export async function createSnapshot(diskPath: string, options: CreateSnapshotOptions = {}): Promise<string> {
  if (typeof diskPath !== 'string' || diskPath === '' || diskPath.includes('\0')) {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a file path', 'diskPath', diskPath));
  }
  const abs = resolve(diskPath);
  const dir = dirname(abs);
  const childPath = options.name === undefined ? await nextSnapshotName(abs) : checkName(options.name, abs);
  const held = options.yieldHeldLock;
  const lock = held ? undefined : await acquireFileLock(lockRecordPathFor(abs), { mode: 'exclusive', record: { operation: 'snapshot create' } });
  let layerFiles: string[] = [];
  let makesReadOnly = false;
  /** The child's temporary file while it exists (until the rename). */
  let temp: string | undefined;
  try {
    let plan: ChildPlan;
    {
      await using disk = await openDisk(abs, { readOnly: true, allowEncrypted: true });
      const top = topLayer(disk);
      // An ESX delta disk is never written by vmseal, nor made a parent: its grains (512 B for
      // vmfsSparse) do not fit a hosted sparse child, and its files are vSphere's to manage.
      if (isReadOnlySubformat(top.subformat)) throw readOnlySubformatError(top.subformat, abs);
      plan = planChild(disk, options.descriptorLines);
      layerFiles = top.files();
    }
    const files = layerFiles;
    await undoUnfinishedSnapshot(abs, async () => files, true);
    // Checked before the rename, which would replace a file of that name.
    if (await exists(childPath)) throw new VmdkFormatError('ERR_VMDK_EXISTS', 'file already exists: give the snapshot another name', { file: childPath });
    makesReadOnly = ((await stat(abs)).mode & 0o222) !== 0;
    temp = pendingChildPath(abs, makesReadOnly);
    await createChildFile(
      temp,
      {
        capacity: plan.capacity,
        subformat: 'monolithicSparse',
        grainSize: plan.grainSize,
        adapterType: plan.adapterType,
        hwVersion: plan.hwVersion,
        descriptorLines: options.descriptorLines,
        parent: { cid: plan.cid, fileNameHint: relative(dir, abs) },
      },
      basename(childPath),
    );
    await fsyncDir(dir);
    if (makesReadOnly) await setWritable(layerFiles, false);
    await rename(temp, childPath).catch((err: unknown) => {
      throw ioError(err, 'put the snapshot in place', childPath);
    });
    temp = undefined;
    await fsyncDir(dir);
  } catch (err) {
    if (temp !== undefined) {
      // Undone in the crash-safe order: the layer writable, then the marker removed.
      if (makesReadOnly) await setWritable(layerFiles, true).catch(() => undefined);
      await rm(temp, { force: true }).catch(() => undefined);
    }
    throw err;
  } finally {
    lock?.release();
  }
  if (held) {
    try {
      await held();
    } catch (err) {
      // The caller cannot use the child: the snapshot is taken back (child first, then the write bits).
      await rm(childPath, { force: true }).catch(() => undefined);
      if (makesReadOnly) await setWritable(layerFiles, true).catch(() => undefined);
      throw err;
    }
  }
  return childPath;
}

/**
 * Undo a createSnapshot whose child nothing has written yet (a server that could not switch to it):
 * remove the child and make the top layer of the chain ending at `diskPath` writable again. The
 * caller holds the disk's lock exclusively, as for createSnapshot with `lockHeld`.
 */
export async function removeNewSnapshot(diskPath: string, childPath: string): Promise<void> {
  const abs = resolve(diskPath);
  let layerFiles: string[];
  {
    await using disk = await openDisk(abs, { readOnly: true, allowEncrypted: true });
    layerFiles = topLayer(disk).files();
  }
  await rm(resolve(childPath), { force: true }).catch((err: unknown) => {
    throw ioError(err, 'remove the snapshot', childPath);
  });
  await setWritable(layerFiles, true);
}

/**
 * VMware's "revert to snapshot": discard every change made since the snapshot at the top of the
 * chain `topPath` was taken. The top is replaced by a new empty child of the same parent, under the
 * same name: made under a temporary name in the same folder, then renamed over the top (one atomic
 * step: a crash leaves the old top or the new one, and at worst the temporary file). The top must be
 * a monolithicSparse child without children of its own. Returns the (same) path.
 */
export async function revertSnapshot(topPath: string, options: Pick<CreateSnapshotOptions, 'descriptorLines'> = {}): Promise<string> {
  if (typeof topPath !== 'string' || topPath === '' || topPath.includes('\0')) {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a file path', 'topPath', topPath));
  }
  const abs = resolve(topPath);
  const lock = await acquireFileLock(lockRecordPathFor(abs), { mode: 'exclusive', record: { operation: 'snapshot revert' } });
  const temp = join(dirname(abs), `.${basename(abs)}.vmseal-revert`);
  try {
    let plan: ChildPlan;
    let parentPath: string;
    {
      await using disk = await openDisk(abs, { readOnly: true, allowEncrypted: true });
      const top = topLayer(disk);
      const link = parentLink(top.descriptor, abs);
      if (!(disk instanceof ChainDisk) || !link) throw chainError('not a snapshot (the disk has no parent): nothing to revert to', abs);
      if (top.subformat !== 'monolithicSparse') throw chainError(`only a monolithicSparse snapshot is reverted, not ${top.subformat}`, abs);
      if (((await stat(abs)).mode & 0o222) === 0) throw chainError('this layer has snapshots of its own (mode 0444): revert the newest one', abs);
      parentPath = parentPathOf(abs, link.hint);
      plan = { ...planChild(disk.parent, options.descriptorLines), grainSize: top.grainSize ?? 65536 };
      plan.adapterType = ADAPTER_TYPES.find((a) => a === top.descriptor?.get('ddb.adapterType')) ?? plan.adapterType;
    }
    await rm(temp, { force: true });
    const child = await createDiskNamed(
      temp,
      {
        capacity: plan.capacity,
        subformat: 'monolithicSparse',
        grainSize: plan.grainSize,
        adapterType: plan.adapterType,
        hwVersion: plan.hwVersion,
        descriptorLines: options.descriptorLines,
        parent: { cid: plan.cid, fileNameHint: relative(dirname(abs), parentPath) },
      },
      basename(abs),
    );
    await child.flush();
    await child.close();
    await rename(temp, abs).catch((err: unknown) => {
      throw ioError(err, 'replace the snapshot', abs);
    });
    await fsyncDir(dirname(abs));
    return abs;
  } catch (err) {
    await rm(temp, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    lock.release();
  }
}
