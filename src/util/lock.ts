/**
 * One lock primitive for everything vmseal must not do twice at once (a disk job, a keystore
 * read-modify-write): an open-file-description (OFD) lock on byte 0 of a record file
 * `<realpath of the target>.vmseal-lock`.
 *
 * The kernel owns the truth: an OFD lock lives exactly as long as the open file description that
 * took it, so a holder that exits, is SIGKILLed or lingers as an unreaped zombie holds nothing, and
 * a recycled pid cannot look like a holder. No pid is ever tested. The JSON in the record file
 * ({pid, host, operation, started, tool}) is written by exclusive holders for error messages only.
 *
 * Protocol:
 *  - open (create) the record file, take the lock (shared = F_RDLCK, exclusive = F_WRLCK), then
 *    compare the fd's inode with the path's: a releasing holder unlinks the file while it still
 *    holds the lock, so a lock won on an unlinked (or replaced) inode is worthless: close and retry.
 *  - an exclusive holder truncates the file and writes its record;
 *  - release: unlink the record file while still holding an exclusive lock, then close. A shared
 *    holder only unlinks when it can upgrade to exclusive (no one else holds the file), so the file
 *    does not linger beside an input disk; otherwise it just closes.
 * The fd is O_CLOEXEC, so a child process never inherits (and keeps alive) a lock.
 */
import { ftruncateSync, readFileSync, realpathSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { hostName } from './host-name.js';
import { basename, dirname, join, resolve } from 'node:path';
import { VmsealError } from '../errors.js';
import { nativeFileLocks } from './native-lock.js';

export type FileLockErrorCode =
  | 'ERR_LOCK_BUSY' // another process holds a conflicting lock (waited up to waitMs)
  | 'ERR_LOCK_IO'; // the record file could not be opened or locked

/** Every code the util layer (and the addon's lock and file-extent calls) can throw. */
export type UtilErrorCode =
  | FileLockErrorCode
  | 'ERR_LOCK_UNSUPPORTED' // the addon's lock calls on a platform without OFD locks (not Linux)
  | 'ERR_FS_EXTENTS_IO' // the addon's fileDataRanges (src/util/file-extents.ts): lseek SEEK_DATA/SEEK_HOLE failed
  | 'ERR_NOWAIT_IO' // the addon's preadNowait (src/util/inline-io.ts): preadv2 failed (HostFile reports it as ERR_VMDK_IO)
  | 'ERR_WRITEBACK_IO' // the addon's writebackStart: sync_file_range failed (copy jobs ignore it: their fsync reports the I/O error)
  | 'ERR_COPY_RANGE_IO' // the addon's copyFileRange: copy_file_range failed (plain copy jobs report it as ERR_VMDK_IO)
  | 'ERR_BACKUP_CHUNK_IO' // the addon's storeChunks/restoreChunks (src/util/native-backup.ts): a system call failed (backups report it as the node:fs error)
  | 'ERR_QEMU_LOCKED'; // qemu (qemu-img, qemu-nbd, a VM) holds the image with permissions that conflict

export class FileLockError extends VmsealError {
  declare readonly code: FileLockErrorCode;
  /** The record file. */
  readonly file: string;
  /** For ERR_LOCK_BUSY: what holds it (an exclusive holder's record, or readers). */
  readonly holder?: LockHolder;

  constructor(code: FileLockErrorCode, message: string, details: { file: string; holder?: LockHolder; cause?: unknown }) {
    super(code, message, { cause: details.cause });
    this.file = details.file;
    this.holder = details.holder;
  }
}

export interface LockRecord {
  pid: number;
  host: string;
  operation: string;
  started: string;
  tool: string;
}

/** Who holds a lock we could not take: an exclusive holder (with its record when readable) or readers. */
export type LockHolder = { kind: 'exclusive'; record?: LockRecord } | { kind: 'shared' };

export interface FileLockOptions {
  mode: 'shared' | 'exclusive';
  /** Written into the record file by an exclusive holder (for other processes' messages). */
  record?: { operation?: string; tool?: string };
  /** Keep retrying a busy lock this long (0: fail at once). */
  waitMs?: number;
  /**
   * An exclusive lock held by a job covers the disk openings of its own process (see
   * holdsExclusiveLock; default true). A writer's own lock (src/vmdk/open.ts) does not: a second
   * writer in the same process is refused like any other.
   */
  coversOpens?: boolean;
}

export interface FileLockHandle {
  readonly path: string;
  readonly mode: 'shared' | 'exclusive';
  release(): void;
}

/** The record file that locks `target`: beside its real path (so two names of one file share a lock). */
export function lockRecordPathFor(target: string): string {
  const abs = resolve(target);
  let real: string;
  try {
    real = realpathSync.native(abs);
  } catch {
    // The target does not exist yet (an output): resolve its folder instead.
    try {
      real = join(realpathSync.native(dirname(abs)), basename(abs));
    } catch {
      real = abs;
    }
  }
  return `${real}.vmseal-lock`;
}

/** Describe a holder for a message: "vmseal (pid N, encrypt since …)" or "another process". */
export function describeHolder(holder: LockHolder): string {
  if (holder.kind === 'shared') return 'another process (for reading)';
  const r = holder.record;
  if (!r) return 'another process';
  const where = r.host === hostName() ? '' : ` on ${r.host}`;
  return `${r.tool} (pid ${r.pid}${where}, ${r.operation} since ${r.started})`;
}

function readRecord(path: string): LockRecord | undefined {
  try {
    const rec = JSON.parse(readFileSync(path, 'utf8')) as Partial<LockRecord>;
    if (!Number.isSafeInteger(rec.pid) || typeof rec.host !== 'string') return undefined;
    return {
      pid: rec.pid as number,
      host: rec.host,
      operation: typeof rec.operation === 'string' ? rec.operation : 'unknown operation',
      started: typeof rec.started === 'string' ? rec.started : 'an unknown time',
      tool: typeof rec.tool === 'string' ? rec.tool : 'another process',
    };
  } catch {
    return undefined; // empty, half written or gone: it decides nothing anyway
  }
}

function sameInode(fd: number, path: string): boolean {
  const held = nativeFileLocks().lockStat(fd);
  try {
    const now = statSync(path, { bigint: true });
    return now.dev === held.dev && now.ino === held.ino;
  } catch {
    return false; // unlinked by a releasing holder
  }
}

function closeQuietly(fd: number): void {
  try {
    nativeFileLocks().lockClose(fd);
  } catch {
    // closing drops the lock; an error here leaves nothing held
  }
}

type Attempt = { fd: number } | { busy: LockHolder } | { retry: true };

function attempt(path: string, mode: 'shared' | 'exclusive'): Attempt {
  const native = nativeFileLocks();
  let fd: number;
  try {
    fd = native.lockOpen(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).errno === 2 /* ENOENT: folder renamed under us */) return { retry: true };
    throw new FileLockError('ERR_LOCK_IO', `cannot open the lock file ${path}: ${(err as Error).message}`, { file: path, cause: err });
  }
  try {
    if (!native.lockSet(fd, mode === 'exclusive' ? 'write' : 'read', 0, 1)) {
      const conflict = native.lockGet(fd, 'write', 0, 1);
      // A conflicting write lock is an exclusive holder; otherwise (readers, or the holder left
      // between the two calls) report readers unless the record says otherwise.
      const holder: LockHolder = conflict?.type === 'write' ? { kind: 'exclusive', record: readRecord(path) } : { kind: 'shared' };
      closeQuietly(fd);
      return { busy: holder };
    }
    if (!sameInode(fd, path)) {
      closeQuietly(fd);
      return { retry: true };
    }
    return { fd };
  } catch (err) {
    closeQuietly(fd);
    throw new FileLockError('ERR_LOCK_IO', `cannot lock ${path}: ${(err as Error).message}`, { file: path, cause: err });
  }
}

const TRANSIENT_GRACE_MS = 200;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Take the lock whose record file is `recordPath` (see lockRecordPathFor). Retries a busy lock for
 * up to `waitMs`, then throws FileLockError ERR_LOCK_BUSY naming the holder.
 */
export async function acquireFileLock(recordPath: string, options: FileLockOptions): Promise<FileLockHandle> {
  const { mode } = options;
  const waitMs = options.waitMs ?? 0;
  const started = Date.now();
  const deadline = started + waitMs;
  for (let retries = 0; ;) {
    const got = attempt(recordPath, mode);
    if ('retry' in got) {
      // Lost a race with a releasing holder; the next open creates a fresh file.
      if (++retries > 1000) throw new FileLockError('ERR_LOCK_IO', `the lock file ${recordPath} keeps being replaced`, { file: recordPath });
      continue;
    }
    if ('busy' in got) {
      // An exclusive holder without a readable record is either between taking the lock and
      // writing it, or a reader upgrading to unlink the file on release: both last microseconds.
      const transient = got.busy.kind === 'exclusive' && !got.busy.record && Date.now() < started + TRANSIENT_GRACE_MS;
      if (!transient && Date.now() >= deadline) {
        const who = got.busy.kind === 'shared' ? 'in use for reading by another process' : `in use by ${describeHolder(got.busy)}`;
        throw new FileLockError('ERR_LOCK_BUSY', `${who}; lock file ${recordPath}`, { file: recordPath, holder: got.busy });
      }
      await sleep(5 + Math.floor(Math.random() * 25));
      continue;
    }
    const { fd } = got;
    if (mode === 'exclusive') {
      const record: LockRecord = {
        pid: process.pid,
        host: hostName(),
        operation: options.record?.operation ?? 'lock',
        started: new Date().toISOString(),
        tool: options.record?.tool ?? 'vmseal',
      };
      try {
        ftruncateSync(fd, 0);
        writeSync(fd, JSON.stringify(record) + '\n', 0);
      } catch {
        // the record only feeds other processes' messages; the lock itself is held
      }
    }
    return makeHandle(recordPath, mode, fd, mode === 'exclusive' && options.coversOpens !== false);
  }
}

/** Exclusive locks this process holds, by record file (a count: a lock may be taken again after release). */
const heldHere = new Map<string, number>();

/**
 * Whether this process holds the lock of `recordPath` exclusively (through acquireFileLock). A
 * function that opens a disk for writing takes the disk's lock unless its caller already holds it
 * (a job that locked the disk, then opens it): two open file descriptions of one process conflict.
 */
export function holdsExclusiveLock(recordPath: string): boolean {
  return (heldHere.get(recordPath) ?? 0) > 0;
}

function makeHandle(path: string, mode: 'shared' | 'exclusive', fd: number, covers: boolean): FileLockHandle {
  let open = true;
  if (covers) heldHere.set(path, (heldHere.get(path) ?? 0) + 1);
  return {
    path,
    mode,
    release() {
      if (!open) return;
      open = false;
      if (covers) {
        const n = (heldHere.get(path) ?? 1) - 1;
        if (n > 0) heldHere.set(path, n);
        else heldHere.delete(path);
      }
      // Unlink only while holding the lock exclusively, so no one can be holding the inode we
      // remove; a shared holder upgrades first, and simply closes if others still hold it.
      const exclusive = mode === 'exclusive' || safeUpgrade(fd);
      if (exclusive && sameInode(fd, path)) {
        try {
          unlinkSync(path);
        } catch {
          // already gone
        }
      }
      closeQuietly(fd);
    },
  };
}

function safeUpgrade(fd: number): boolean {
  try {
    return nativeFileLocks().lockSet(fd, 'write', 0, 1);
  } catch {
    return false;
  }
}

/** Run `fn` under an exclusive lock, waiting up to `waitMs` for it; the lock is released afterwards. */
export async function withExclusiveLock<T>(recordPath: string, options: { operation?: string; waitMs?: number }, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireFileLock(recordPath, { mode: 'exclusive', record: { operation: options.operation }, waitMs: options.waitMs });
  try {
    return await fn();
  } finally {
    lock.release();
  }
}
