/**
 * Snapshots of encrypted disks: the key-aware side of the VMDK layer's createSnapshot and
 * revertSnapshot (docs/format.md, "Snapshot chains").
 */
import { ChainDisk, createSnapshot, openDisk as openVmdk, revertSnapshot, type VirtualDisk } from '../vmdk/index.js';
import type { EncryptedDisk } from './encrypted-disk.js';
import { dataCheckOf } from './data-check.js';
import { DiskError } from './errors.js';
import { jobLineError } from './interrupted-job.js';
import { unlockDek, type UnlockOptions } from './keying.js';
import { layered } from './layers.js';
import { assertNoJournal, encryptionOf, openDisk, openWithDek, unlockInner } from './open.js';
import { encryptionLines, type EncryptionParams } from './params.js';
import { readUnitZero } from './unit-zero.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';

export interface EncryptedSnapshotOptions {
  /** How to unlock the disk (as for openDisk). */
  keys: UnlockOptions;
  /** File name of the new child (see the VMDK layer's createSnapshot); default `<base>-00000N.vmdk`. */
  name?: string;
}

/**
 * Open `path` (an encrypted disk or chain top) with every check of openDisk (authenticator, layers,
 * data check), and compute the encryption lines of a new child of it (childLines).
 */
async function childLinesOf(
  path: string,
  keys: UnlockOptions,
  parentOf: (inner: VirtualDisk) => VirtualDisk,
  upgrade: boolean,
): Promise<Array<[string, string]>> {
  assertNoJournal(path);
  const inner = await openVmdk(path, { readOnly: !upgrade, allowEncrypted: true });
  let opened: EncryptedDisk | undefined;
  try {
    const enc = encryptionOf(inner);
    if (!enc) throw new DiskError('ERR_NOT_ENCRYPTED', `${path} is not encrypted; take a plain snapshot without keys`);
    if (enc.job !== undefined) throw jobLineError(path, enc.job);
    opened = await unlockInner(inner, enc.params, keys); // every check, the layers' included
    const dek = await unlockDek(enc.params, inner.capacity, keys, path);
    try {
      return await childLines(opened, parentOf(inner), dek, upgrade);
    } finally {
      dek.fill(0);
    }
  } finally {
    await (opened ?? inner).close();
  }
}

/**
 * The encryption lines of a new child of `parent` (the top layer of the open `disk`, or for a revert
 * the layer below it): same KeySafe, cipher, unit size and disk id, a fresh layer id, the parent's as
 * parentLayerId, and the data check of unit 0 as it reads now (nothing may be writing to `disk`).
 * When `upgrade`, a disk that is not a version-3 layer yet first gets a layer id and a new
 * authenticator, written through `disk` (before any child exists; an embedded descriptor is
 * rewritten in place).
 */
async function childLines(disk: EncryptedDisk, parent: VirtualDisk, dek: Buffer, upgrade: boolean): Promise<Array<[string, string]>> {
  const inner = disk.innerDisk;
  const p0 = encryptionOf(parent)?.params;
  if (!p0) throw new DiskError('ERR_NOT_ENCRYPTED', `${parent.path} is not encrypted`);
  let p: EncryptionParams = p0;
  if (p.layerId === undefined) {
    if (!upgrade) throw new DiskError('ERR_WRONG_PARENT', `${parent.path} is not a snapshot layer (format version 3)`);
    const next = layered(dek, p, inner.capacity, undefined);
    await inner.updateDescriptor((d) => {
      for (const [k, v] of encryptionLines(next)) d.set(k, v);
    });
    p = next;
  }
  const unit0 = await readUnitZero(parent, disk.dataCipher);
  if (!unit0) throw new DiskError('ERR_WRONG_DATA', `${parent.path}: data unit 0 is not backed by data; run vmseal repair --reseal-data-check first`);
  // The child's own data check: unit 0 as the chain reads it now, nothing pending.
  return encryptionLines(layered(dek, { ...p, dataCheck: dataCheckOf(dek, p.diskId, p.unitSize, unit0) }, inner.capacity, p.layerId));
}

/** Take the disk's vmseal lock exclusively for `operation`, or throw ERR_LOCK_BUSY naming its holder (a server serving it, a job): as the pipeline's lock says it. */
async function lockDisk(path: string, operation: string): Promise<FileLockHandle> {
  try {
    return await acquireFileLock(lockRecordPathFor(path), { mode: 'exclusive', record: { operation, tool: 'vmseal' } });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new FileLockError('ERR_LOCK_BUSY', `${path} is ${err.message}`, {
        file: err.file,
        ...(err.holder ? { holder: err.holder } : {}),
        cause: err,
      });
    }
    throw err;
  }
}

/**
 * Take a snapshot of an encrypted disk (a base disk or the top of a chain) and return the new
 * child's path (see the VMDK layer's createSnapshot for naming and the parent's mode 0444).
 */
export async function createEncryptedSnapshot(path: string, options: EncryptedSnapshotOptions): Promise<string> {
  // Locked before the descriptor may be upgraded: a disk that a server or a job has open is refused
  // before anything of it is written.
  const lock = await lockDisk(path, 'snapshot create');
  try {
    const lines = await childLinesOf(path, options.keys, (inner) => inner, true);
    return await createSnapshot(path, {
      ...(options.name !== undefined ? { name: options.name } : {}),
      descriptorLines: lines,
      yieldHeldLock: async () => lock.release(),
    });
  } finally {
    lock.release(); // a no-op once yielded
  }
}

/**
 * A live snapshot of an open disk, prepared: for an encrypted disk its DEK is unlocked now (a KDF,
 * a KMS round trip), before the caller holds writes back, and held until dispose().
 */
export interface PreparedSnapshot {
  /**
   * Take the snapshot through the open disk, which the caller has stopped writing to and flushed,
   * holding its lock exclusively: an encrypted disk's child gets its lines as in
   * createEncryptedSnapshot, a plain disk's is a plain child. `yieldHeldLock` is called where the
   * caller's lock is to be released or downgraded (see the VMDK layer's createSnapshot). Returns the
   * child's path; the open disk is left as it is (its files are read-only now: close it).
   */
  take(disk: VirtualDisk | EncryptedDisk, options: { name?: string; yieldHeldLock: () => Promise<void> }): Promise<string>;
  /** Open the chain ending at `path` for writing with every check of openDisk; an encrypted one with the held DEK. */
  open(path: string): Promise<VirtualDisk | EncryptedDisk>;
  /**
   * The held DEK (null for a plain disk), for a server that commits a chain it serves with it
   * (src/pipeline/commit.ts planHeldCommit, which copies it); wiped by dispose().
   */
  readonly dek: Buffer | null;
  /** Wipe the DEK. */
  dispose(): void;
}

/**
 * Prepare a snapshot of `disk`, open for writing (a server snapshotting the disk it serves): `keys`
 * unlock an encrypted disk's DEK (the open disk keeps none), which is checked against its
 * authenticator. Nothing is written.
 */
export async function prepareSnapshot(disk: VirtualDisk | EncryptedDisk, keys: UnlockOptions | undefined): Promise<PreparedSnapshot> {
  if (!disk.encrypted) {
    return {
      take: (d, options) => createSnapshot(d.path, { ...(options.name !== undefined ? { name: options.name } : {}), yieldHeldLock: options.yieldHeldLock }),
      open: (path) => openDisk(path),
      dek: null,
      dispose: () => undefined,
    };
  }
  if (keys === undefined) throw new DiskError('ERR_DISK_ENCRYPTED', `${disk.path} is encrypted: give keys to take a snapshot of it`);
  const dek = await unlockDek(disk.encryption, disk.capacity, keys, disk.path);
  return {
    async take(d, options) {
      if (!d.encrypted) throw new DiskError('ERR_NOT_ENCRYPTED', `${d.path} is not encrypted`);
      const lines = await childLines(d, d.innerDisk, dek, true);
      return createSnapshot(d.path, {
        ...(options.name !== undefined ? { name: options.name } : {}),
        descriptorLines: lines,
        yieldHeldLock: options.yieldHeldLock,
      });
    },
    async open(path) {
      assertNoJournal(path);
      const inner = await openVmdk(path, { readOnly: false, allowEncrypted: true });
      try {
        const enc = encryptionOf(inner);
        if (!enc) throw new DiskError('ERR_NOT_ENCRYPTED', `${path} is not encrypted`);
        if (enc.job !== undefined) throw jobLineError(path, enc.job);
        return await openWithDek(inner, enc.params, dek);
      } catch (err) {
        await inner.close().catch(() => undefined);
        throw err;
      }
    },
    dek,
    dispose: () => void dek.fill(0),
  };
}

/** Revert the encrypted snapshot at the top of a chain: a new empty encrypted child of its parent, under the same name. */
export async function revertEncryptedSnapshot(path: string, options: Pick<EncryptedSnapshotOptions, 'keys'>): Promise<string> {
  const lines = await childLinesOf(
    path,
    options.keys,
    (inner) => {
      if (!(inner instanceof ChainDisk)) throw new DiskError('ERR_INVALID_ARGUMENT', `${path} is not a snapshot: nothing to revert to`);
      return inner.parent;
    },
    false,
  );
  return revertSnapshot(path, { descriptorLines: lines });
}
