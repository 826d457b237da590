import { expected } from '../errors.js';
import { invalidArgument } from './errors.js';
import type { KeyProvider, KeyRef } from './provider.js';

/**
 * The host key cache: KEKs fetched from key providers, held in this process's memory only (never written
 * anywhere) — what an ESXi host keeps in RAM. While a KEK is cached, disks locked by it unlock with the
 * provider down. `clear()` wipes every entry (a "host restart"); every cache is also cleared when the
 * process exits normally. An optional TTL expires entries.
 *
 * Entries are scoped to the provider INSTANCE that fetched them, not to the (providerId, keyId) a disk
 * names: a process serving several tenants gives each its own provider instance with its own
 * credentials, and the KMS decides per credential which keys it hands out. Were the cache keyed by the
 * ids read from the disk, any tenant naming the same provider id and key id would get another tenant's
 * KEK without the KMS being asked. So lookups take the provider object itself: each instance gets a
 * private token (a WeakMap from the object, tokens never reused), entries are keyed by token and key id,
 * and a KEK stored for instance A is never returned for instance B, nor without an instance.
 */
export interface KeyCacheOptions {
  /** Milliseconds an entry stays usable after it was stored (default: no expiry). */
  ttlMs?: number;
}

interface Entry {
  kek: Buffer;
  expiresAt: number;
  token: number;
  timer?: NodeJS.Timeout;
}

const live = new Set<WeakRef<KeyCache>>();
// Forget the weak references of caches that were garbage-collected (their buffers went with them).
const finalizer = new FinalizationRegistry<WeakRef<KeyCache>>((ref) => live.delete(ref));
let exitHookInstalled = false;

/** Per-provider-instance tokens. Weak: the cache never keeps a provider (and its credentials) alive. */
const tokens = new WeakMap<object, number>();
let nextToken = 1;
// A provider that was garbage-collected can never look its entries up again: wipe them.
const providerGone = new FinalizationRegistry<number>((token) => {
  for (const ref of live) ref.deref()?.dropToken(token);
});

function tokenOf(provider: KeyProvider): number {
  let token = tokens.get(provider);
  if (token === undefined) {
    token = nextToken++;
    tokens.set(provider, token);
    providerGone.register(provider, token);
  }
  return token;
}

/** Wipe every live cache of this process (the 'exit' hook; exported for tests). */
export function wipeAllCaches(): void {
  for (const ref of live) ref.deref()?.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', wipeAllCaches);
}

function checkProvider(v: unknown): KeyProvider {
  const p = v as KeyProvider | null;
  if (p === null || typeof p !== 'object' || typeof p.getKey !== 'function' || typeof p.id !== 'string' || p.id === '') {
    throw invalidArgument(expected('the KeyProvider instance that fetches the key', 'provider', v));
  }
  return p;
}

function checkId(v: unknown, name: string): string {
  if (typeof v !== 'string' || v.length === 0) throw invalidArgument(expected('a non-empty string', name, v));
  return v;
}

/** Map key: the instance token and the key id (no separator ambiguity: the token is digits only). */
function cacheKey(provider: unknown, keyId: unknown): string {
  const p = checkProvider(provider);
  return `${tokenOf(p)}/${checkId(keyId, 'keyId')}`;
}

export class KeyCache {
  private readonly entries = new Map<string, Entry & KeyRef>();
  private readonly ttlMs: number | undefined;
  private readonly ref = new WeakRef(this);

  constructor(options: KeyCacheOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidArgument(expected('an object', 'options', options));
    const { ttlMs } = options;
    if (ttlMs !== undefined && (typeof ttlMs !== 'number' || !(ttlMs > 0) || !Number.isFinite(ttlMs))) {
      throw invalidArgument(expected('a positive number of milliseconds', 'ttlMs', ttlMs));
    }
    this.ttlMs = ttlMs;
    live.add(this.ref);
    finalizer.register(this, this.ref);
    installExitHook();
  }

  /**
   * A copy of the KEK that `provider` (this very instance) fetched under `keyId` (the caller wipes it),
   * or undefined if absent or expired.
   */
  get(provider: KeyProvider, keyId: string): Buffer | undefined {
    const k = cacheKey(provider, keyId);
    const e = this.entries.get(k);
    if (!e) return undefined;
    if (Date.now() >= e.expiresAt) {
      this.drop(k);
      return undefined;
    }
    return Buffer.from(e.kek);
  }

  has(provider: KeyProvider, keyId: string): boolean {
    const kek = this.get(provider, keyId);
    kek?.fill(0);
    return kek !== undefined;
  }

  /**
   * Store a copy of a KEK that `provider` returned for `keyId` (the caller keeps, and wipes, its own
   * buffer). Replaces an existing entry of the same instance and key id.
   */
  set(provider: KeyProvider, keyId: string, kek: Buffer): void {
    const k = cacheKey(provider, keyId);
    if (!Buffer.isBuffer(kek) || kek.length === 0) throw invalidArgument(expected('a non-empty Buffer', 'kek', kek));
    this.drop(k);
    const entry: Entry & KeyRef = {
      providerId: provider.id,
      keyId,
      token: tokenOf(provider),
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

  /** Wipe and forget one KEK of one provider instance; true if it was cached. */
  delete(provider: KeyProvider, keyId: string): boolean {
    return this.drop(cacheKey(provider, keyId));
  }

  /** Wipe the entries of a provider instance that no longer exists (its token can never recur). @internal */
  dropToken(token: number): void {
    for (const [k, e] of [...this.entries]) if (e.token === token) this.drop(k);
  }

  /** Wipe and forget every KEK (a host restart). */
  clear(): void {
    for (const k of [...this.entries.keys()]) this.drop(k);
  }

  /** Number of entries (expired ones not yet swept may be counted). */
  get size(): number {
    return this.entries.size;
  }

  /** References of the cached keys, of every provider instance (no key material). */
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
