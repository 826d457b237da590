/**
 * qemu's image locking, spoken by vmseal so that a running VM (or qemu-img / qemu-io / qemu-nbd) and
 * a vmseal job refuse each other. qemu (block/file-posix.c) takes OFD *read* locks on single bytes of
 * the image file it opens:
 *   byte 100 + i  "I use permission i"
 *   byte 200 + i  "I do not let others use permission i"
 * with permissions 0 CONSISTENT_READ, 1 WRITE, 2 WRITE_UNCHANGED, 3 RESIZE, 4 GRAPH_MOD. Because all
 * of them are read locks, holders never block each other at lock time; a conflict is found by asking
 * (F_OFD_GETLK for a write lock) whether anyone else holds 200+i for a permission i we use, or 100+i
 * for a permission i we do not share. Like qemu, we first apply our bytes and then check, so two
 * parties racing both see the other (and both refuse) rather than both proceeding.
 *
 * vmseal locks the file qemu opens first: the VMDK descriptor file (monolithic images carry it
 * inside), or a raw image itself.
 */
import { nativeFileLocks } from './native-lock.js';

const PERM_BASE = 100;
const SHARED_BASE = 200;
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize', 'graph modification'] as const;
const ALL = [0, 1, 2, 3, 4];

/** Permission sets by role: a reader uses consistent read and forbids writes (as `qemu-img info` does,
 *  so the two coexist); a writer uses read+write and shares nothing (its image is inconsistent mid-job). */
const ROLES = {
  shared: { use: [0], unshare: [1] },
  exclusive: { use: [0, 1], unshare: ALL },
} as const;

export interface QemuLockHandle {
  release(): void;
}

/** A conflict found in qemu's lock bytes. */
export class QemuLockConflict extends Error {
  readonly code = 'ERR_QEMU_LOCKED';
  constructor(
    readonly path: string,
    readonly permission: string,
    readonly reason: 'used' | 'unshared',
  ) {
    super(
      reason === 'used'
        ? `another program (qemu or a VM) holds the "${permission}" permission on ${path}`
        : `another program (qemu or a VM) does not share the "${permission}" permission on ${path}`,
    );
    this.name = 'QemuLockConflict';
  }
}

/**
 * Take qemu-style permission locks on `imagePath` for the role, keeping the fd open until release.
 * Throws QemuLockConflict when another open file description's bytes conflict. A missing file is not
 * locked (returns a no-op handle): an output that does not exist yet cannot be in use.
 */
export function acquireQemuLock(imagePath: string, role: 'shared' | 'exclusive'): QemuLockHandle {
  const native = nativeFileLocks();
  let fd: number;
  try {
    // Read-only: qemu's locks are all read locks, which need only read access.
    fd = native.lockOpen(imagePath, true);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).errno === 2 /* ENOENT */) return { release() {} };
    throw err;
  }
  const { use, unshare } = ROLES[role];
  try {
    // A read lock is refused only by someone's write lock on the byte (not qemu's way, but a lock).
    for (const i of use) if (!native.lockSet(fd, 'read', PERM_BASE + i, 1)) throw new QemuLockConflict(imagePath, PERM_NAMES[i], 'used');
    for (const i of unshare) if (!native.lockSet(fd, 'read', SHARED_BASE + i, 1)) throw new QemuLockConflict(imagePath, PERM_NAMES[i], 'unshared');
    // Our own locks never conflict with our own test (same open file description).
    for (const i of use) {
      if (native.lockGet(fd, 'write', SHARED_BASE + i, 1)) throw new QemuLockConflict(imagePath, PERM_NAMES[i], 'unshared');
    }
    for (const i of unshare) {
      if (native.lockGet(fd, 'write', PERM_BASE + i, 1)) throw new QemuLockConflict(imagePath, PERM_NAMES[i], 'used');
    }
  } catch (err) {
    native.lockClose(fd);
    throw err;
  }
  let open = true;
  return {
    release() {
      if (!open) return;
      open = false;
      native.lockClose(fd);
    },
  };
}
