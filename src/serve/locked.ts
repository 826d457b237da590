/**
 * A *locked* export: an encrypted disk whose KEK could be neither found in the key cache nor fetched
 * (the KMS is down), served as vSphere serves a VM after a host restart with its KMS away. The disk
 * is not open — no DEK is in memory — but its lock is held (exclusive for a writable export, shared
 * for a read-only one) so that no job or VM takes the disk meanwhile. Clients that pick it are
 * refused (negotiate.ts asks `clientMessage`), NBD_OPT_LIST still shows it.
 *
 * It unlocks itself: the provider is retried with backoff (`initialMs`, doubling to `maxMs`, each
 * delay jittered to between half and all of it so that many hosts restarted together do not hit the
 * KMS in step; timers unref'd), and `unlock(keys)` tries other key options at once (a recovery
 * passphrase). Attempts run one at a time. An attempt opens the whole disk first (unlock, check the
 * authenticator and data check) while the export is still locked, and only then hands the host a
 * ready Export in one synchronous step: a client sees the locked export or the open one, never a
 * half-opened disk.
 */
import { openDisk } from '../disk/index.js';
import type { UnlockOptions } from '../keys/index.js';
import type { DiskLock } from '../pipeline/lock.js';
import { openDisk as openVmdk } from '../vmdk/index.js';
import { ServeError } from './errors.js';
import { Export, type ExportInfo, type ServedDisk } from './export.js';
import { describeUnavailable, unavailableKey, type UnavailableKey } from './unavailable.js';

/** What a host maps an export name to: an open export or a locked one. */
export type ExportEntry = Export | LockedExport;

/** Backoff of the provider retries of locked exports. */
export interface UnlockRetry {
  /** First delay in ms (default: 1000). */
  initialMs: number;
  /** The delay doubles up to this (default: 60000). */
  maxMs: number;
}

export const DEFAULT_UNLOCK_RETRY: UnlockRetry = { initialMs: 1000, maxMs: 60_000 };

/** The sizes a locked export reports, read without a key (a VMDK's descriptor, a state file's header). */
export interface Shape {
  capacity: number;
  sparse: boolean;
  subformat: string;
}

export interface LockedExportOptions {
  name: string;
  path: string;
  readOnly: boolean;
  shared: number;
  /** Taken by the caller; owned by this export from here (and by the Export that replaces it). */
  lock: DiskLock;
  /** The key options the retries use (those the disk failed to open with). */
  keys: UnlockOptions;
  why: UnavailableKey;
  retry: UnlockRetry;
  log(line: string): void;
  /** Put the open export in this one's place (synchronously). */
  onUnlocked(exp: Export): void;
  /**
   * Open the disk with `keys` (default: src/disk's openDisk). A state file (UEFI variables,
   * vars-export.ts) passes its own, so that it is locked and unlocked by the same rule as a disk.
   */
  open?: (keys: UnlockOptions) => Promise<ServedDisk>;
  /** What it is, for its description (default: "encrypted <subformat> disk"). */
  what?: string;
}

/** Capacity and subformat of an encrypted disk, from its descriptor and extents (no key needed). */
export async function readShape(path: string): Promise<Shape> {
  const inner = await openVmdk(path, { readOnly: true, allowEncrypted: true });
  try {
    return { capacity: inner.capacity, sparse: inner.grainSize !== undefined, subformat: inner.subformat };
  } finally {
    await inner.close();
  }
}

export class LockedExport {
  readonly name: string;
  readonly path: string;
  readonly readOnly: boolean;
  readonly shared: number;
  readonly description: string;
  readonly #shape: Shape;
  readonly #lock: DiskLock;
  readonly #keys: UnlockOptions;
  readonly #retry: UnlockRetry;
  readonly #log: (line: string) => void;
  readonly #onUnlocked: (exp: Export) => void;
  readonly #open: (keys: UnlockOptions) => Promise<ServedDisk>;
  #reason: string;
  /** closed: close() came while locked; released: and the lock is given back. */
  #state: 'locked' | 'unlocked' | 'closed' | 'released' = 'locked';
  /** Tail of the attempts (retries and unlock() calls run one at a time). */
  #attempts: Promise<unknown> = Promise.resolve();
  #delay: number;
  #timer: NodeJS.Timeout | undefined;

  constructor(o: LockedExportOptions, shape: Shape) {
    this.name = o.name;
    this.path = o.path;
    this.readOnly = o.readOnly;
    this.shared = o.shared;
    this.#shape = shape;
    this.#lock = o.lock;
    this.#keys = o.keys;
    this.#retry = o.retry;
    this.#log = o.log;
    this.#onUnlocked = o.onUnlocked;
    this.#open = o.open ?? ((keys) => openDisk(o.path, { readOnly: o.readOnly, keys }));
    this.#reason = describeUnavailable(o.why);
    this.#delay = o.retry.initialMs;
    this.description = `locked ${o.what ?? `encrypted ${shape.subformat} disk`} ${o.path}`;
  }

  /** Why it is locked: "key K of provider P unavailable: CAUSE" (no key material). */
  get reason(): string {
    return this.#reason;
  }

  /**
   * The NBD_REP_ERR_UNKNOWN message for a client that picks this export. With --no-list it names no
   * key or provider (those are for the host's operator: exports(), the log).
   */
  clientMessage(noList: boolean): string {
    return noList ? 'disk locked' : `disk locked: ${this.#reason}`;
  }

  info(): ExportInfo {
    return {
      name: this.name,
      path: this.path,
      size: this.#shape.capacity,
      encrypted: true,
      readOnly: this.readOnly,
      sparse: this.#shape.sparse,
      clients: 0,
      shared: this.shared,
      bytesRead: 0,
      bytesWritten: 0,
      locked: true,
      lockedReason: this.#reason,
    };
  }

  /** Begin the provider retries (after the host put this export in its table). */
  start(): void {
    this.#log(`export ${this.name} locked: ${this.#reason} (next try within ${seconds(this.#delay)})`);
    this.#schedule();
  }

  /**
   * Try to open the disk with `keys` now. Resolves with the open export (already in the host's
   * table); rejects with the key layer's error (ERR_WRONG_KEY …), the export staying locked and its
   * retries going on, or with ERR_SERVE_NOT_LOCKED if it was unlocked meanwhile.
   */
  unlock(keys: UnlockOptions): Promise<Export> {
    return this.#attempt(keys, 'unlock');
  }

  /** Stop the retries, wait for an attempt in flight, release the lock (unless the disk was unlocked). Safe to call twice. */
  async close(): Promise<void> {
    if (this.#state === 'locked') this.#state = 'closed';
    clearTimeout(this.#timer);
    await this.#attempts;
    if (this.#state === 'closed') {
      this.#state = 'released';
      await this.#lock.release();
    }
  }

  #schedule(): void {
    // Equal jitter: between half and all of the delay.
    const wait = Math.round(this.#delay / 2 + (Math.random() * this.#delay) / 2);
    this.#timer = setTimeout(() => void this.#retryOnce(), wait);
    this.#timer.unref();
  }

  async #retryOnce(): Promise<void> {
    try {
      await this.#attempt(this.#keys, 'retry');
    } catch (err) {
      if (this.#state !== 'locked') return;
      this.#delay = Math.min(this.#delay * 2, this.#retry.maxMs);
      const why = unavailableKey(err);
      this.#reason = why ? describeUnavailable(why) : `cannot unlock: ${(err as Error).message}`;
      this.#log(`export ${this.name} still locked: ${this.#reason} (next try within ${seconds(this.#delay)})`);
      this.#schedule();
    }
  }

  #attempt(keys: UnlockOptions, by: 'retry' | 'unlock'): Promise<Export> {
    const run = this.#attempts.then(async () => {
      if (this.#state === 'closed' || this.#state === 'released')
        throw new ServeError('ERR_SERVE_CLOSED', `export ${this.name} was closed: the host is stopping`);
      if (this.#state === 'unlocked') throw new ServeError('ERR_SERVE_NOT_LOCKED', `export ${this.name} is not locked (it was unlocked meanwhile)`);
      const disk = await this.#open(keys);
      // close() came while the disk was opening: it keeps the lock (and releases it), the disk goes.
      if (this.#state !== 'locked') {
        await disk.close();
        throw new ServeError('ERR_SERVE_CLOSED', `export ${this.name} was closed: the host is stopping`);
      }
      this.#state = 'unlocked';
      clearTimeout(this.#timer);
      const exp = new Export(this.name, disk, { readOnly: this.readOnly, shared: this.shared, lock: this.#lock });
      this.#onUnlocked(exp);
      this.#log(`export ${this.name} unlocked${by === 'unlock' ? ' with the given keys' : ''}`);
      return exp;
    });
    this.#attempts = run.catch(() => undefined);
    return run;
  }
}

function seconds(ms: number): string {
  return ms >= 1000 ? `${Math.round(ms / 100) / 10} s` : `${ms} ms`;
}
