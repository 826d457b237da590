/**
 * Reservations of file NAMES in a folder, for files that do not exist yet or that a job is about
 * to replace: one record file `<real folder>/.vmseal-lock` per folder, and one OFD byte-range lock
 * per name on it, at an offset derived from the name (8 bytes of SHA-256, modulo 2^52, plus 1).
 *
 * Why one file per folder and not one per name: a twoGbMaxExtent disk can have 9,999 extent files,
 * and a lock file per name would mean as many open descriptors (and as many files left beside the
 * disk). Byte ranges of one file cost the kernel a lock record each, not a descriptor.
 *
 * Two different names can hash to the same byte: they then exclude each other although they do
 * not conflict. That false conflict is the only consequence (ERR_LOCK_BUSY for a job that could
 * have run), and at 2^52 slots it takes ~67 million names in one folder for a 50 % chance of any
 * collision at all.
 *
 * The same rules as src/util/lock.ts: the kernel drops the locks with the open file description
 * (process exit, SIGKILL, zombie); the fd is O_CLOEXEC; after locking, the fd must still be the file
 * at the path (same inode), else retry. The file is unlinked only under a write lock over the WHOLE
 * file (l_len 0), which is granted only when no other open file description holds any name; a
 * holder of a name blocks that unlink, so a reservation can never sit on an unlinked inode.
 * That whole-file lock lasts microseconds: a conflict with a range of length 0 is retried.
 */
import { createHash } from 'node:crypto';
import { realpathSync, statSync, unlinkSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { FileLockError } from './lock.js';
import { nativeFileLocks } from './native-lock.js';

export const NAME_LOCK_FILE = '.vmseal-lock';
/** 2^52 slots: the low 20 bits of the hash's first 32-bit word above its second word. */
const HIGH_WORD_MASK = 2 ** 20 - 1;

/** The byte of the folder's record file that stands for `name`. */
export function nameLockOffset(name: string): number {
  const h = createHash('sha256').update(name, 'utf8').digest();
  // The first 8 bytes (big-endian) modulo 2^52, plus 1: byte 0 is left out of every name's range.
  // Their low 52 bits are the high word's low 20 bits and the low word, which a double holds
  // exactly: no BigInt to make for every name a job reserves or releases.
  return (h.readUInt32BE(0) & HIGH_WORD_MASK) * 2 ** 32 + h.readUInt32BE(4) + 1;
}

export type NameLockMode = 'shared' | 'exclusive';

export interface NameRequest {
  name: string;
  mode: NameLockMode;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The real path of a folder (the folder itself must exist). */
function realFolder(folder: string): string {
  try {
    return realpathSync.native(resolve(folder));
  } catch (err) {
    throw new FileLockError('ERR_LOCK_IO', `cannot reserve names in ${folder}: ${(err as Error).message}`, {
      file: join(resolve(folder), NAME_LOCK_FILE),
      cause: err,
    });
  }
}

const TRANSIENT_GRACE_MS = 200;

/**
 * The names a job holds in one folder, through one open file description. Names can be added while
 * held (the extent names of an output, then its staging folder); they are all dropped by close().
 */
export class FolderNameLocks {
  readonly folder: string;
  readonly path: string;
  #fd: number | undefined;
  readonly #held = new Map<string, NameLockMode>();

  private constructor(folder: string) {
    this.folder = folder;
    this.path = join(folder, NAME_LOCK_FILE);
  }

  /** Open the folder's record file (nothing is reserved until take/tryTake). */
  static open(folder: string): FolderNameLocks {
    return new FolderNameLocks(realFolder(folder));
  }

  /** Names held now, with their mode. */
  get held(): ReadonlyMap<string, NameLockMode> {
    return this.#held;
  }

  /**
   * Reserve every name, or none: a conflict releases what this call took and throws ERR_LOCK_BUSY
   * naming the first busy name. A name already held is upgraded to exclusive when asked.
   */
  async take(requests: NameRequest[]): Promise<void> {
    const started = Date.now();
    for (let retries = 0; ; retries++) {
      const busy = this.#attempt(requests);
      if (busy === undefined) return;
      if (busy === 'replaced') {
        if (retries > 1000) throw new FileLockError('ERR_LOCK_IO', `the lock file ${this.path} keeps being replaced`, { file: this.path });
        continue;
      }
      if (busy.transient && Date.now() < started + TRANSIENT_GRACE_MS) {
        await sleep(2 + Math.floor(Math.random() * 8));
        continue;
      }
      const what = busy.type === 'write' ? 'being written (or replaced)' : 'being read';
      throw new FileLockError('ERR_LOCK_BUSY', `the file ${join(this.folder, busy.name)} is ${what} by another vmseal job; lock file ${this.path}`, {
        file: this.path,
        holder: busy.type === 'write' ? { kind: 'exclusive' } : { kind: 'shared' },
      });
    }
  }

  /**
   * Reserve one name exclusively if nobody holds it; false when someone does. Used to tell a live
   * job's staging folder or temp file (its owner holds the name) from a dead one's.
   */
  tryTakeExclusive(name: string): boolean {
    for (let retries = 0; retries < 1000; retries++) {
      const busy = this.#attempt([{ name, mode: 'exclusive' }]);
      if (busy === undefined) return true;
      if (busy !== 'replaced') return false;
    }
    throw new FileLockError('ERR_LOCK_IO', `the lock file ${this.path} keeps being replaced`, { file: this.path });
  }

  /** Drop one name's reservation. */
  release(name: string): void {
    if (!this.#held.has(name) || this.#fd === undefined) return;
    nativeFileLocks().lockSet(this.#fd, 'unlock', nameLockOffset(name), 1);
    this.#held.delete(name);
  }

  /** Drop every name; remove the record file when no one else holds any name in it. */
  close(): void {
    const fd = this.#fd;
    if (fd === undefined) return;
    this.#fd = undefined;
    this.#held.clear();
    const native = nativeFileLocks();
    try {
      if (native.lockSet(fd, 'write', 0, 0) && this.#sameInode(fd)) unlinkSync(this.path);
    } catch {
      // another holder, or already gone: the file stays (a hidden, empty file)
    }
    try {
      native.lockClose(fd);
    } catch {
      // closing drops the locks; an error leaves nothing held
    }
  }

  #sameInode(fd: number): boolean {
    const held = nativeFileLocks().lockStat(fd);
    try {
      const now = statSync(this.path, { bigint: true });
      return now.dev === held.dev && now.ino === held.ino;
    } catch {
      return false;
    }
  }

  #openFd(): number {
    if (this.#fd !== undefined) return this.#fd;
    try {
      this.#fd = nativeFileLocks().lockOpen(this.path);
    } catch (err) {
      throw new FileLockError('ERR_LOCK_IO', `cannot open the lock file ${this.path}: ${(err as Error).message}`, { file: this.path, cause: err });
    }
    return this.#fd;
  }

  /** One try: undefined when all taken; the busy name; or 'replaced' (the file was unlinked under us: reopened). */
  #attempt(requests: NameRequest[]): { name: string; type: 'read' | 'write'; transient: boolean } | 'replaced' | undefined {
    const native = nativeFileLocks();
    const fd = this.#openFd();
    const taken: Array<{ name: string; before: NameLockMode | undefined }> = [];
    const undo = () => {
      for (const t of taken.reverse()) {
        const off = nameLockOffset(t.name);
        // Back to what was held before this call (a shared name asked exclusive goes back to shared).
        native.lockSet(fd, t.before === undefined ? 'unlock' : t.before === 'shared' ? 'read' : 'write', off, 1);
        if (t.before === undefined) this.#held.delete(t.name);
        else this.#held.set(t.name, t.before);
      }
    };
    for (const r of requests) {
      const before = this.#held.get(r.name);
      const mode: NameLockMode = before === 'exclusive' ? 'exclusive' : r.mode;
      if (before === mode) continue;
      const off = nameLockOffset(r.name);
      const type = mode === 'exclusive' ? 'write' : 'read';
      if (!native.lockSet(fd, type, off, 1)) {
        const conflict = native.lockGet(fd, type, off, 1);
        undo();
        // A conflict over the whole file (len 0) is a releaser about to unlink it.
        return { name: r.name, type: conflict?.type ?? 'write', transient: conflict === null || conflict.len === 0 };
      }
      taken.push({ name: r.name, before });
      this.#held.set(r.name, mode);
    }
    if (this.#sameInode(fd)) return undefined;
    // Won on an unlinked inode: only possible while this description held no other name.
    undo();
    if (this.#held.size > 0) throw new FileLockError('ERR_LOCK_IO', `the lock file ${this.path} was replaced while names were held in it`, { file: this.path });
    try {
      native.lockClose(fd);
    } catch {
      // nothing held on it
    }
    this.#fd = undefined;
    return 'replaced';
  }
}
