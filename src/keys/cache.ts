import { describeValue } from '../errors.js';
import { invalidArgument } from './errors.js';
import type { KeyRef } from './provider.js';

/**
 * The host key cache: KEKs fetched from key providers, held in this process's memory only (never written
 * anywhere), keyed by provider id and key id — what an ESXi host keeps in RAM. While a KEK is cached,
 * disks locked by it unlock with every provider down. `clear()` wipes every entry (a "host restart");
 * every cache is also cleared when the process exits normally. An optional TTL expires entries.
 */
export interface KeyCacheOptions {
  /** Milliseconds an entry stays usable after it was stored (default: no expiry). */
  ttlMs?: number;
}

interface Entry {
  kek: Buffer;
  expiresAt: number;
  timer?: NodeJS.Timeout;
}

const live = new Set<WeakRef<KeyCache>>();
// Forget the weak references of caches that were garbage-collected (their buffers went with them).
const finalizer = new FinalizationRegistry<WeakRef<KeyCache>>((ref) => live.delete(ref));
let exitHookInstalled = false;

/** Wipe every live cache of this process (the 'exit' hook; exported for tests). */
export function wipeAllCaches(): void {
  for (const ref of live) ref.deref()?.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', wipeAllCaches);
}

function cacheKey(providerId: string, keyId: string): string {
  return `${providerId.length}:${providerId}/${keyId}`;
}

function checkId(v: unknown, name: string): string {
  if (typeof v !== 'string' || v.length === 0) throw invalidArgument(`Expected a non-empty string for ${name} but received ${describeValue(v)}`);
  return v;
}

export class KeyCache {
  private readonly entries = new Map<string, Entry & KeyRef>();
  private readonly ttlMs: number | undefined;
  private readonly ref = new WeakRef(this);

  constructor(options: KeyCacheOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidArgument(`Expected an options object but received ${describeValue(options)}`);
    const { ttlMs } = options;
    if (ttlMs !== undefined && (typeof ttlMs !== 'number' || !(ttlMs > 0) || !Number.isFinite(ttlMs))) {
      throw invalidArgument(`Expected a positive number of milliseconds for ttlMs but received ${describeValue(ttlMs)}`);
    }
    this.ttlMs = ttlMs;
    live.add(this.ref);
    finalizer.register(this, this.ref);
    installExitHook();
  }

  /** A copy of the cached KEK (the caller wipes it), or undefined if absent or expired. */
  get(providerId: string, keyId: string): Buffer | undefined {
    const k = cacheKey(checkId(providerId, 'providerId'), checkId(keyId, 'keyId'));
    const e = this.entries.get(k);
    if (!e) return undefined;
    if (Date.now() >= e.expiresAt) {
      this.drop(k);
      return undefined;
    }
    return Buffer.from(e.kek);
  }

  has(providerId: string, keyId: string): boolean {
    const kek = this.get(providerId, keyId);
    kek?.fill(0);
    return kek !== undefined;
  }

  /** Store a copy of a KEK (the caller keeps, and wipes, its own buffer). Replaces an existing entry. */
  set(providerId: string, keyId: string, kek: Buffer): void {
    const k = cacheKey(checkId(providerId, 'providerId'), checkId(keyId, 'keyId'));
    if (!Buffer.isBuffer(kek) || kek.length === 0) throw invalidArgument(`Expected a non-empty Buffer for kek but received ${describeValue(kek)}`);
    this.drop(k);
    const entry: Entry & KeyRef = {
      providerId,
      keyId,
      kek: Buffer.from(kek),
      expiresAt: this.ttlMs === undefined ? Infinity : Date.now() + this.ttlMs,
    };
    if (this.ttlMs !== undefined) {
      // Wipe promptly at expiry, not only at the next lookup; unref'd so a cache never keeps a process alive.
      entry.timer = setTimeout(() => this.drop(k), this.ttlMs);
      entry.timer.unref();
    }
    this.entries.set(k, entry);
  }

  /** Wipe and forget one KEK; true if it was cached. */
  delete(providerId: string, keyId: string): boolean {
    return this.drop(cacheKey(checkId(providerId, 'providerId'), checkId(keyId, 'keyId')));
  }

  /** Wipe and forget every KEK (a host restart). */
  clear(): void {
    for (const k of [...this.entries.keys()]) this.drop(k);
  }

  /** Number of entries (expired ones not yet swept may be counted). */
  get size(): number {
    return this.entries.size;
  }

  /** References of the cached keys (no key material). */
  list(): KeyRef[] {
    const now = Date.now();
    return [...this.entries.values()].filter((e) => now < e.expiresAt).map((e) => ({ providerId: e.providerId, keyId: e.keyId }));
  }

  private drop(k: string): boolean {
    const e = this.entries.get(k);
    if (!e) return false;
    e.kek.fill(0);
    if (e.timer) clearTimeout(e.timer);
    this.entries.delete(k);
    return true;
  }
}
