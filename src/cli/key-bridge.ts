/**
 * Keys for the worker threads of a batch. The batch's one KeySession stays on the main thread: the
 * keystore is unlocked (its master key derived from the passphrase) once, a KMIP server is
 * connected to once, and every KEK is fetched once into the session's cache. A worker never sees
 * the key options, files or passphrases of the key providers; it asks the main thread over its
 * MessagePort:
 *
 *   worker → main  { type: 'key', rid, op: 'unlock', disk, usePassphrase?, format? }
 *                    → { providerIds, passphrase? }   the providers (and recovery passphrase) that
 *                                                     KeySession.unlockOptions would offer for disk
 *                  { type: 'key', rid, op: 'lockers' }
 *                    → [{ kind: 'provider', providerId, keyId } | { kind: 'passphrase', passphrase, rounds? }]
 *                                                     the batch's lockers for new DEKs
 *                  { type: 'key', rid, op: 'kek', providerId, keyId }
 *                    → ArrayBuffer of the 32-byte KEK, transferred (moved, not copied) to the worker
 *   main → worker  { type: 'key-reply', rid, ok: true, value } | { type: 'key-reply', rid, ok: false, error }
 *
 * In the worker each provider id becomes a BridgeProvider whose getKey asks for the KEK; the
 * worker's own KeyCache keeps it, so a worker asks once per KEK. Only providers the main thread
 * offered for a disk (or for the batch's lockers) are served. Secrets travel in memory between the
 * threads of this process only: never in a worker's argv, environment, workerData or a file.
 */
import { VmsealError } from '../errors.js';
import { KeyCache, type KeyProvider, type KeyRef, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { CliError } from './errors.js';
import type { ExitCodeValue } from './exit-codes.js';
import type { ImageKeys } from './commands/convert-image.js';
import type { KeySession } from './key-session.js';

/** What a worker asks for. */
type KeyAsk =
  { op: 'unlock'; disk: string; usePassphrase?: boolean; format?: 'vmdk' | 'raw' } | { op: 'lockers' } | { op: 'kek'; providerId: string; keyId: string };

export type KeyRequest = { type: 'key'; rid: number } & KeyAsk;

export type KeyReply = { type: 'key-reply'; rid: number } & ({ ok: true; value: unknown } | { ok: false; error: WireError });

interface UnlockPlan {
  providerIds: string[];
  passphrase?: string | Uint8Array;
}

type WireLocker = { kind: 'provider'; providerId: string; keyId: string } | { kind: 'passphrase'; passphrase: string | Uint8Array; rounds?: number };

/** An error as it crosses to another thread: what classify() and reasonOf() look at, no stack, no cause. */
export interface WireError {
  name: string;
  message: string;
  code?: string;
  syscall?: string;
  /** Set for a VmsealError (the CLI classifies it by its code). */
  vmseal?: boolean;
  /** Set for a CliError. */
  cli?: { exitCode: ExitCodeValue; hint?: string };
}

export function toWireError(err: unknown): WireError {
  if (!(err instanceof Error)) return { name: 'Error', message: String(err) };
  const { code, syscall } = err as NodeJS.ErrnoException;
  return {
    name: err.name,
    message: err.message,
    ...(typeof code === 'string' ? { code } : {}),
    ...(typeof syscall === 'string' ? { syscall } : {}),
    ...(err instanceof VmsealError ? { vmseal: true } : {}),
    ...(err instanceof CliError ? { cli: { exitCode: err.exitCode, ...(err.hint !== undefined ? { hint: err.hint } : {}) } } : {}),
  };
}

/** The error again, as the CLI's classify() would have seen it on the other thread. */
export function fromWireError(w: WireError): Error {
  if (w.cli !== undefined)
    return new CliError(w.code ?? 'ERR_UNEXPECTED', w.message, { exitCode: w.cli.exitCode, ...(w.cli.hint !== undefined ? { hint: w.cli.hint } : {}) });
  const err =
    w.vmseal === true
      ? new VmsealError(w.code ?? 'ERR_UNEXPECTED', w.message)
      : Object.assign(new Error(w.message), w.code !== undefined ? { code: w.code } : {});
  err.name = w.name;
  if (w.syscall !== undefined) Object.assign(err, { syscall: w.syscall });
  return err;
}

/** The main thread's side: answers the key requests of a batch's workers from its KeySession. */
export class KeyDesk {
  private readonly keys: KeySession;
  private readonly newLockers: () => Promise<LockerSpec[]>;
  /** The provider instances offered to workers, by id (a session has one instance per id). */
  private readonly offered = new Map<string, KeyProvider>();
  /** KEK fetches under way: images unlocked at the same moment wait for one fetch. */
  private readonly fetching = new Map<string, Promise<void>>();

  constructor(keys: KeySession, newLockers: () => Promise<LockerSpec[]>) {
    this.keys = keys;
    this.newLockers = newLockers;
  }

  /**
   * Keys for the images the main thread converts itself, taken through this desk like a worker's
   * (no port: the replies are delivered directly; a KEK's buffer is then the caller's own).
   */
  localKeys(passphraseGiven: boolean): BridgeKeys {
    const keys: BridgeKeys = new BridgeKeys((req) => void this.answer(req).then(({ reply }) => keys.onReply(reply)), passphraseGiven);
    return keys;
  }

  /** The reply to a request, and the buffers to transfer with it. */
  async answer(req: KeyRequest): Promise<{ reply: KeyReply; transfer: ArrayBuffer[] }> {
    try {
      const { value, transfer } = await this.serve(req);
      return { reply: { type: 'key-reply', rid: req.rid, ok: true, value }, transfer };
    } catch (err) {
      return { reply: { type: 'key-reply', rid: req.rid, ok: false, error: toWireError(err) }, transfer: [] };
    }
  }

  private offer(provider: KeyProvider): string {
    this.offered.set(provider.id, provider);
    return provider.id;
  }

  private async serve(req: KeyRequest): Promise<{ value: unknown; transfer: ArrayBuffer[] }> {
    switch (req.op) {
      case 'unlock': {
        const u = await this.keys.unlockOptions(req.disk, {
          ...(req.usePassphrase !== undefined ? { usePassphrase: req.usePassphrase } : {}),
          ...(req.format !== undefined ? { format: req.format } : {}),
        });
        const providers = Array.isArray(u.providers) ? u.providers : Object.values(u.providers ?? {});
        const plan: UnlockPlan = { providerIds: providers.map((p) => this.offer(p)), ...(u.passphrase !== undefined ? { passphrase: u.passphrase } : {}) };
        return { value: plan, transfer: [] };
      }
      case 'lockers': {
        const lockers: WireLocker[] = (await this.newLockers()).map((l) => {
          if (l.kind === 'passphrase') return { kind: 'passphrase', passphrase: l.passphrase, ...(l.rounds !== undefined ? { rounds: l.rounds } : {}) };
          // The batch made (or was given) its KEK before the first image: a worker never creates keys.
          if (l.keyId === undefined) throw new Error('a batch locker without its key id');
          return { kind: 'provider', providerId: this.offer(l.provider), keyId: l.keyId };
        });
        return { value: lockers, transfer: [] };
      }
      case 'kek': {
        const kek = await this.kek(req.providerId, req.keyId);
        // A fresh ArrayBuffer to move to the worker: nothing of it stays on this thread.
        const moved = new ArrayBuffer(kek.length);
        new Uint8Array(moved).set(kek);
        kek.fill(0);
        return { value: moved, transfer: [moved] };
      }
    }
  }

  /** The KEK from the session's cache, fetched from its provider (once) if not there yet. */
  private async kek(providerId: string, keyId: string): Promise<Buffer> {
    const provider = this.offered.get(providerId);
    if (provider === undefined) throw new Error(`a batch worker asked for a key of provider '${providerId}', which was not offered to it`);
    const cached = this.keys.cache.get(provider, keyId);
    if (cached !== undefined) return cached;
    const name = `${providerId}/${keyId}`;
    let fetch = this.fetching.get(name);
    if (fetch === undefined) {
      fetch = provider.getKey(keyId).then((kek) => {
        try {
          this.keys.cache.set(provider, keyId, kek);
        } finally {
          kek.fill(0);
        }
      });
      this.fetching.set(name, fetch);
      void fetch.finally(() => this.fetching.delete(name)).catch(() => undefined);
    }
    await fetch;
    const kek = this.keys.cache.get(provider, keyId);
    if (kek === undefined) throw new Error(`the key '${keyId}' of provider '${providerId}' left the cache at once`);
    return kek;
  }
}

/** A provider in a worker that gets its KEKs from the main thread's session. */
class BridgeProvider implements KeyProvider {
  readonly id: string;
  private readonly ask: (keyId: string) => Promise<ArrayBuffer>;

  constructor(id: string, ask: (keyId: string) => Promise<ArrayBuffer>) {
    this.id = id;
    this.ask = ask;
  }

  async getKey(keyId: string): Promise<Buffer> {
    return Buffer.from(await this.ask(keyId));
  }

  // A batch's keys are made before its first image, on the main thread; a worker only unwraps and wraps.
  createKey(): Promise<KeyRef> {
    return Promise.reject(new Error('a batch worker cannot create keys'));
  }

  destroyKey(): Promise<void> {
    return Promise.reject(new Error('a batch worker cannot destroy keys'));
  }
}

/** The worker's side: the ImageKeys of an image, answered by the main thread's KeyDesk. */
export class BridgeKeys implements ImageKeys {
  readonly cache = new KeyCache();
  readonly passphraseGiven: boolean;
  private readonly post: (req: KeyRequest) => void;
  private nextRid = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private readonly providers = new Map<string, BridgeProvider>();
  private lockers: Promise<LockerSpec[]> | undefined;

  constructor(post: (req: KeyRequest) => void, passphraseGiven: boolean) {
    this.post = post;
    this.passphraseGiven = passphraseGiven;
  }

  /** Settle the request a reply answers. */
  onReply(reply: KeyReply): void {
    const waiting = this.pending.get(reply.rid);
    if (waiting === undefined) return;
    this.pending.delete(reply.rid);
    if (reply.ok) waiting.resolve(reply.value);
    else waiting.reject(fromWireError(reply.error));
  }

  private request<T>(ask: KeyAsk): Promise<T> {
    const rid = this.nextRid++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(rid, { resolve: resolve as (v: unknown) => void, reject });
      this.post({ ...ask, type: 'key', rid });
    });
  }

  private provider(id: string): BridgeProvider {
    let p = this.providers.get(id);
    if (p === undefined) {
      p = new BridgeProvider(id, (keyId) => this.request<ArrayBuffer>({ op: 'kek', providerId: id, keyId }));
      this.providers.set(id, p);
    }
    return p;
  }

  async unlockOptions(disk: string, opts: { usePassphrase?: boolean; format?: 'vmdk' | 'raw' }): Promise<UnlockOptions> {
    const plan = await this.request<UnlockPlan>({ op: 'unlock', disk, ...opts });
    return {
      providers: plan.providerIds.map((id) => this.provider(id)),
      cache: this.cache,
      ...(plan.passphrase !== undefined ? { passphrase: plan.passphrase } : {}),
    };
  }

  /** The batch's lockers for new DEKs (asked for once per worker). */
  newLockers(): Promise<LockerSpec[]> {
    this.lockers ??= this.request<WireLocker[]>({ op: 'lockers' }).then((list) =>
      list.map((l): LockerSpec => (l.kind === 'passphrase' ? l : { kind: 'provider', provider: this.provider(l.providerId), keyId: l.keyId })),
    );
    return this.lockers;
  }

  /** Wipe the KEKs this worker holds. */
  close(): void {
    this.cache.clear();
  }
}
