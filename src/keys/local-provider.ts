import { randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { mkdir, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { expected } from '../errors.js';
import { KeyError, invalidArgument } from './errors.js';
import { createFileAtomic } from '../util/atomic-file.js';
import { withFileLock } from './file-lock.js';
import { decodeBase64String } from './base64.js';
import type { CreateKeyOptions, KeyProvider, KeyRef } from './provider.js';
import { checkScryptCost, gcmOpen, gcmSeal, scryptKey, type ScryptCost } from './keystore-sealing.js';
import {
  DISK_ID,
  MASTER_PREFIX,
  checkPrivate,
  ioError,
  readMasterKeyFile,
  readStoreFileWithId,
  sameStoreFile,
  statStoreFile,
  writeStoreFile,
  type KeyEntry,
  type LocalKeyInfo,
  type MasterSpec,
  type Store,
  type StoreFileId,
} from './keystore-file.js';
import { readBackup, writeBackup, type BackupEntry } from './keystore-backup.js';

export type { LocalKeyInfo } from './keystore-file.js';

/**
 * The embedded local key provider (vmseal's counterpart of vSphere's Native Key Provider): KEKs in a
 * keystore folder, wrapped under a master key from a key file or a passphrase. The modules under it:
 * keystore-file.ts (the files, their format and permission checks), keystore-sealing.ts (GCM and
 * scrypt), keystore-backup.ts (the backup file). This one holds the master key and the operations.
 *
 * Every change is a read-modify-write of keystore.json under the keystore's OFD lock, written
 * atomically. A retired key (a deep rekey replaced it) keeps its material, so that an old backup of
 * the disk can still be restored, but getKey refuses it (ERR_KEY_RETIRED) unless the provider was
 * made with allowRetired: an old copy of a descriptor must not silently open.
 */
export interface LocalKeyProviderOptions {
  /** Directory of the keystore (default: $VMSEAL_HOME, else ~/.vmseal). */
  home?: string;
  /** Protect the master key with this passphrase (scrypt) instead of a key file. */
  passphrase?: string | Uint8Array;
  /** Provider id recorded in KeySafe lockers (default: 'local'). */
  id?: string;
  /** scrypt cost for a new passphrase keystore and for backups (default: n 131072, r 8, p 1). Lower only in tests. */
  scrypt?: { n: number; r: number; p: number };
  /** How long to wait for another process's keystore lock (default: 10000 ms). */
  lockTimeoutMs?: number;
  /** Hand out retired keys too (to open an old backup of a disk after a deep rekey; default: false). */
  allowRetired?: boolean;
}

export const LOCAL_PROVIDER_DEFAULTS = Object.freeze({
  id: 'local',
  scrypt: Object.freeze({ n: 2 ** 17, r: 8, p: 1 }),
  lockTimeoutMs: 10_000,
});

const CHECK_TEXT = Buffer.from('vmseal keystore check', 'ascii');

export class LocalKeyProvider implements KeyProvider {
  readonly id: string;
  readonly home: string;
  readonly keystorePath: string;
  readonly masterKeyPath: string;
  readonly lockPath: string;
  private readonly cost: ScryptCost;
  private readonly lockTimeoutMs: number;
  private passphrase: Buffer | undefined;
  private readonly usesPassphrase: boolean;
  private master: Buffer | undefined;
  /** The master key being derived or read, so that concurrent first uses wait for one derivation. */
  private masterPending: Promise<Buffer> | undefined;
  /**
   * The keystore as this provider last read or wrote it, with the identity of that file: a read
   * finds the file unchanged by one stat instead of reading and validating it again (an encrypt
   * creates its KEK, then fetches it to seal the DEK). Never handed to a change: modify() reads the
   * file afresh under the lock.
   */
  private snapshot: { store: Store; id: StoreFileId } | undefined;
  readonly allowRetired: boolean;

  constructor(options: LocalKeyProviderOptions = {}) {
    if (options === null || typeof options !== 'object') throw invalidArgument(expected('an object', 'options', options));
    const home = options.home ?? process.env.VMSEAL_HOME ?? join(homedir(), '.vmseal');
    if (typeof home !== 'string' || home === '') throw invalidArgument(expected('a non-empty path', 'home', home));
    const id = options.id ?? LOCAL_PROVIDER_DEFAULTS.id;
    if (typeof id !== 'string' || !/^[A-Za-z0-9._-]{1,64}$/.test(id)) {
      throw invalidArgument(expected('1..64 characters [A-Za-z0-9._-]', 'id', id));
    }
    if (options.passphrase !== undefined) {
      const p = options.passphrase;
      if (!((typeof p === 'string' || p instanceof Uint8Array) && p.length > 0)) {
        throw invalidArgument(expected('a non-empty string or Buffer', 'passphrase', p));
      }
      this.passphrase = typeof p === 'string' ? Buffer.from(p, 'utf8') : Buffer.from(p);
    }
    this.usesPassphrase = this.passphrase !== undefined;
    this.cost = options.scrypt === undefined ? { ...LOCAL_PROVIDER_DEFAULTS.scrypt } : checkScryptCost(options.scrypt, 'scrypt');
    const t = options.lockTimeoutMs ?? LOCAL_PROVIDER_DEFAULTS.lockTimeoutMs;
    if (!Number.isInteger(t) || t < 0) throw invalidArgument(expected('a non-negative integer', 'lockTimeoutMs', t));
    this.lockTimeoutMs = t;
    if (options.allowRetired !== undefined && typeof options.allowRetired !== 'boolean') {
      throw invalidArgument(expected('a boolean', 'allowRetired', options.allowRetired));
    }
    this.allowRetired = options.allowRetired === true;
    this.id = id;
    this.home = resolve(home);
    this.keystorePath = join(this.home, 'keystore.json');
    this.masterKeyPath = join(this.home, 'master.key');
    // The record file of the keystore's OFD lock (src/util/lock.ts); home may not exist yet, so the
    // real path is not resolved here.
    this.lockPath = `${this.keystorePath}.vmseal-lock`;
  }

  /** Create the keystore (and master key file) if absent; otherwise open it and check the master key. */
  async init(): Promise<void> {
    const existing = await this.readStore(false);
    if (existing) {
      await this.unlockMaster(existing);
      return;
    }
    await this.ensureHome();
    await withFileLock(this.lockPath, this.lockTimeoutMs, async () => {
      const again = await this.readStore(false);
      if (again) {
        await this.unlockMaster(again);
        return;
      }
      const store = await this.createStore();
      await this.writeStore(store);
    });
  }

  /** The keys in the keystore (no key material). ERR_KEYSTORE_MISSING if there is no keystore. */
  async list(): Promise<LocalKeyInfo[]> {
    const store = await this.openStore();
    return store.keys.map(({ keyId, name, created, state, diskId, retired, destroyed }) => ({
      keyId,
      name,
      created,
      state,
      ...(diskId !== undefined ? { diskId } : {}),
      ...(retired ? { retired } : {}),
      ...(destroyed ? { destroyed } : {}),
    }));
  }

  /**
   * Make a new random AES-256 KEK, stored wrapped in the keystore (created first if absent). `diskId`
   * records that the key is made for that disk alone, so that a deep rekey of the disk may retire it.
   */
  async createKey(opts: CreateKeyOptions = {}): Promise<KeyRef> {
    if (opts === null || typeof opts !== 'object') throw invalidArgument(expected('an object', 'options', opts));
    const name = opts.name ?? null;
    if (name !== null && (typeof name !== 'string' || name.length > 256)) {
      throw invalidArgument(expected('a string of at most 256 characters', 'name', name));
    }
    const diskId = opts.diskId === undefined ? undefined : checkDiskId(opts.diskId);
    const keyId = randomUUID();
    const kek = randomBytes(32);
    try {
      // One read of the keystore, under the lock (created there if absent), rather than an init() first.
      await this.modify(true, async (store, master) => {
        store.keys.push({
          keyId,
          name,
          created: new Date().toISOString(),
          state: 'active',
          ...(diskId !== undefined ? { diskId } : {}),
          wrapped: gcmSeal(master, kek, `vmseal keystore v1 key ${keyId}`).toString('base64'),
        });
      });
    } finally {
      kek.fill(0);
    }
    return { providerId: this.id, keyId };
  }

  /** The 32-byte KEK `keyId` (the caller wipes it). A retired key: ERR_KEY_RETIRED unless allowRetired. */
  async getKey(keyId: string): Promise<Buffer> {
    checkKeyId(keyId);
    const store = await this.openStore();
    const e = findEntry(store, keyId, this.keystorePath);
    if (e.state === 'retired' && !this.allowRetired) {
      throw new KeyError(
        'ERR_KEY_RETIRED',
        `key '${keyId}' of the local keystore was retired on ${e.retired} (a deep rekey gave its disk a new key): this is an old copy of the disk or of its descriptor`,
        { keyId, providerId: this.id, file: this.keystorePath },
      );
    }
    return this.unwrap(store, keyId, this.master!);
  }

  /** The disk `keyId` was created for alone, or undefined for a shared key. */
  async keyOwner(keyId: string): Promise<string | undefined> {
    checkKeyId(keyId);
    const store = await this.openStore();
    return findEntry(store, keyId, this.keystorePath).diskId;
  }

  /**
   * Take a KEK out of normal use: its material stays (an old backup of the disk can still be opened
   * with allowRetired) but getKey refuses it. Retiring a retired key does nothing.
   */
  async retireKey(keyId: string): Promise<void> {
    checkKeyId(keyId);
    await this.modify(false, async (store) => {
      const e = findEntry(store, keyId, this.keystorePath);
      if (e.state === 'destroyed')
        throw new KeyError('ERR_KEYSTORE_KEY_DESTROYED', `key '${keyId}' was destroyed`, { keyId, providerId: this.id, file: this.keystorePath });
      if (e.state === 'retired') return;
      e.state = 'retired';
      e.retired = new Date().toISOString();
    });
  }

  /** Destroy a KEK: its wrapped material is removed from the keystore; the entry remains as a tombstone. */
  async destroyKey(keyId: string): Promise<void> {
    checkKeyId(keyId);
    await this.modify(false, async (store) => {
      const e = findEntry(store, keyId, this.keystorePath);
      if (e.state === 'destroyed') throw new KeyError('ERR_KEYSTORE_KEY_DESTROYED', `key '${keyId}' was already destroyed`, { keyId, providerId: this.id });
      e.state = 'destroyed';
      e.destroyed = new Date().toISOString();
      delete e.wrapped;
      delete e.retired;
    });
  }

  /**
   * Delete a key that never locked anything (made by a job that did not complete): the entry goes
   * without a tombstone, so `keys list` does not fill up with keys of interrupted jobs. A key already
   * gone is not an error.
   */
  async discardKey(keyId: string): Promise<void> {
    checkKeyId(keyId);
    await this.modify(false, async (store) => {
      store.keys = store.keys.filter((k) => k.keyId !== keyId);
    });
  }

  /**
   * Write every KEK that is not destroyed (active and retired ones) to `file` (mode 0600, atomically), encrypted under `passphrase` with scrypt and
   * AES-256-GCM. Returns the number of keys written.
   */
  async backup(file: string, passphrase: string | Uint8Array): Promise<{ keys: number }> {
    if (typeof file !== 'string' || file === '') throw invalidArgument(expected('a file path', 'file', file));
    const pass = passBytes(passphrase);
    const entries: BackupEntry[] = [];
    try {
      const store = await this.openStore();
      for (const e of store.keys) {
        if (e.state === 'destroyed') continue;
        entries.push({
          keyId: e.keyId,
          name: e.name,
          created: e.created,
          state: e.state,
          ...(e.retired !== undefined ? { retired: e.retired } : {}),
          ...(e.diskId !== undefined ? { diskId: e.diskId } : {}),
          kek: this.unwrap(store, e.keyId, this.master!),
        });
      }
      await writeBackup(resolve(file), entries, pass, this.cost, this.id);
    } finally {
      for (const e of entries) e.kek.fill(0);
      pass.fill(0);
    }
    return { keys: entries.length };
  }

  /**
   * Add the keys of a backup file to this keystore (created if absent). A key already present with the
   * same material is left as is; one present with different material is ERR_KEYSTORE_CONFLICT (nothing is
   * written); a destroyed key comes back, in the state the backup recorded (active, or retired).
   */
  async restore(file: string, passphrase: string | Uint8Array): Promise<{ added: number; unchanged: number }> {
    if (typeof file !== 'string' || file === '') throw invalidArgument(expected('a file path', 'file', file));
    const path = resolve(file);
    const pass = passBytes(passphrase);
    let entries: BackupEntry[];
    try {
      entries = await readBackup(path, pass);
    } finally {
      pass.fill(0);
    }
    let added = 0;
    let unchanged = 0;
    try {
      await this.modify(true, async (store, master) => {
        added = 0;
        unchanged = 0;
        for (const b of entries) {
          const e = store.keys.find((k) => k.keyId === b.keyId);
          if (e && e.state !== 'destroyed') {
            const cur = this.unwrap(store, b.keyId, master);
            const same = timingSafeEqual(cur, b.kek);
            cur.fill(0);
            if (!same) {
              throw new KeyError('ERR_KEYSTORE_CONFLICT', `key '${b.keyId}' exists in the keystore with different key material; nothing was restored`, {
                keyId: b.keyId,
                file: path,
              });
            }
            unchanged++;
            continue;
          }
          // A destroyed or missing key comes back in the state the backup recorded (a retired key stays retired).
          const wrapped = gcmSeal(master, b.kek, `vmseal keystore v1 key ${b.keyId}`).toString('base64');
          const back = {
            state: b.state,
            ...(b.retired !== undefined ? { retired: b.retired } : {}),
            ...(b.diskId !== undefined ? { diskId: b.diskId } : {}),
            wrapped,
          };
          if (e) {
            delete e.destroyed;
            Object.assign(e, back);
          } else {
            store.keys.push({ keyId: b.keyId, name: b.name, created: b.created, ...back });
          }
          added++;
        }
      });
    } finally {
      for (const b of entries) b.kek.fill(0);
    }
    return { added, unchanged };
  }

  /** Wipe the master key (and a passphrase not yet used) from memory. */
  async close(): Promise<void> {
    this.master?.fill(0);
    this.master = undefined;
    this.passphrase?.fill(0);
    this.passphrase = undefined;
    this.snapshot = undefined;
  }

  // ---- internals ----

  private async ensureHome(): Promise<void> {
    try {
      await mkdir(this.home, { recursive: true, mode: 0o700 });
    } catch (err) {
      throw ioError(err, 'create the keystore directory', this.home);
    }
    // mkdir leaves an existing folder as it is: check it before anything is created in it.
    await this.checkHome();
  }

  /** Refuse a keystore folder that group or others can access; an absent one is left to the caller. */
  private async checkHome(): Promise<void> {
    let st;
    try {
      st = await stat(this.home);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw ioError(err, 'read the keystore directory', this.home);
    }
    checkPrivate(st.mode, this.home, 'keystore folder', 0o700, 'ERR_KEYSTORE_PERMISSIONS');
  }

  private async createStore(): Promise<Store> {
    let master: Buffer;
    let spec: MasterSpec;
    if (this.usesPassphrase) {
      if (!this.passphrase) throw new KeyError('ERR_KEYSTORE_PASSPHRASE', 'the provider was closed; its passphrase is gone', { file: this.keystorePath });
      const salt = randomBytes(16);
      master = await scryptKey(this.passphrase, salt, this.cost);
      spec = { source: 'passphrase', kdf: 'scrypt', n: this.cost.n, r: this.cost.r, p: this.cost.p, salt: salt.toString('base64') };
    } else {
      // A master key file left by an init that crashed before writing the keystore is reused, never replaced.
      const fresh = randomBytes(32);
      const text = Buffer.from(`${MASTER_PREFIX}${fresh.toString('base64')}\n`, 'ascii');
      try {
        await createFileAtomic(this.masterKeyPath, text, 0o600);
      } catch (err) {
        throw ioError(err, 'create the master key file', this.masterKeyPath);
      } finally {
        fresh.fill(0);
        text.fill(0);
      }
      master = await readMasterKeyFile(this.masterKeyPath);
      spec = { source: 'keyfile' };
    }
    this.setMaster(master);
    return {
      format: 'vmseal-keystore',
      version: 1,
      providerId: this.id,
      master: spec,
      check: gcmSeal(master, CHECK_TEXT, 'vmseal keystore v1 check').toString('base64'),
      keys: [],
    };
  }

  private setMaster(master: Buffer): void {
    this.master?.fill(0);
    this.master = master;
    this.passphrase?.fill(0);
    this.passphrase = undefined;
  }

  /** Derive or read the master key for a store and check it against the store's check value. */
  private async unlockMaster(store: Store): Promise<Buffer> {
    if (this.usesPassphrase !== (store.master.source === 'passphrase')) {
      throw new KeyError(
        'ERR_KEYSTORE_MODE',
        store.master.source === 'passphrase'
          ? 'the keystore is protected by a passphrase but none was given'
          : 'the keystore is protected by a master key file but a passphrase was given',
        { file: this.keystorePath },
      );
    }
    if (this.master) {
      if (checkOpens(this.master, store)) return this.master;
      throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the keystore was replaced and no longer opens with the master key in memory', { file: this.keystorePath });
    }
    // Images of a batch converted at once all unlock through one provider: one scrypt (slow, 128 MiB)
    // for all of them, and no second derivation that would replace (and wipe) the first one's key.
    const pending = (this.masterPending ??= this.loadMaster(store).finally(() => (this.masterPending = undefined)));
    const master = await pending;
    if (!checkOpens(master, store)) {
      throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the keystore was replaced and no longer opens with the master key in memory', { file: this.keystorePath });
    }
    return master;
  }

  /** Derive (passphrase) or read (key file) the master key of `store`, check it and keep it. */
  private async loadMaster(store: Store): Promise<Buffer> {
    let master: Buffer;
    if (store.master.source === 'passphrase') {
      if (!this.passphrase) throw new KeyError('ERR_KEYSTORE_PASSPHRASE', 'the provider was closed; its passphrase is gone', { file: this.keystorePath });
      const m = store.master;
      master = await scryptKey(this.passphrase, decodeBase64String(m.salt!)!, { n: m.n!, r: m.r!, p: m.p! });
      if (!checkOpens(master, store)) {
        master.fill(0);
        throw new KeyError('ERR_KEYSTORE_PASSPHRASE', 'wrong passphrase for the keystore', { file: this.keystorePath });
      }
    } else {
      master = await readMasterKeyFile(this.masterKeyPath);
      if (!checkOpens(master, store)) {
        master.fill(0);
        throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the master key file does not open this keystore', { file: this.masterKeyPath });
      }
    }
    this.setMaster(master);
    return master;
  }

  /**
   * Read and validate keystore.json; undefined if absent and !required. `fresh`: read the file even
   * if it is the one of the snapshot (a change works on its own copy, read under the lock).
   * `homeChecked`: the caller has just checked the folder.
   */
  private async readStore(required: true, opts?: { fresh?: boolean; homeChecked?: boolean }): Promise<Store>;
  private async readStore(required: boolean, opts?: { fresh?: boolean; homeChecked?: boolean }): Promise<Store | undefined>;
  private async readStore(required: boolean, opts: { fresh?: boolean; homeChecked?: boolean } = {}): Promise<Store | undefined> {
    if (!opts.homeChecked) await this.checkHome();
    const known = this.snapshot;
    if (known && !opts.fresh) {
      const id = await statStoreFile(this.keystorePath);
      if (id && sameStoreFile(id, known.id)) return known.store;
    }
    const read = await readStoreFileWithId(this.keystorePath);
    this.snapshot = read && !opts.fresh ? read : undefined;
    if (read === undefined && required)
      throw new KeyError('ERR_KEYSTORE_MISSING', 'there is no keystore (create a key or run init first)', { file: this.keystorePath });
    return read?.store;
  }

  private async openStore(): Promise<Store> {
    const store = await this.readStore(true);
    await this.unlockMaster(store);
    return store;
  }

  private async writeStore(store: Store): Promise<void> {
    this.snapshot = undefined;
    const id = await writeStoreFile(this.keystorePath, store);
    // Written under the lock: the file is this store until another process takes the lock.
    if (id) this.snapshot = { store, id };
  }

  /**
   * Read-modify-write under the lock file. `create`: a missing keystore is created first (as init()
   * does), in the same locked section.
   */
  private async modify(create: boolean, change: (store: Store, master: Buffer) => Promise<void>): Promise<void> {
    await this.ensureHome();
    await withFileLock(this.lockPath, this.lockTimeoutMs, async () => {
      let store = await this.readStore(!create, { fresh: true, homeChecked: true });
      if (store === undefined) store = await this.createStore();
      const master = await this.unlockMaster(store);
      await change(store, master);
      await this.writeStore(store);
    });
  }

  private unwrap(store: Store, keyId: string, master: Buffer): Buffer {
    const e = findEntry(store, keyId, this.keystorePath);
    if (e.state === 'destroyed' || !e.wrapped) {
      throw new KeyError('ERR_KEYSTORE_KEY_DESTROYED', `key '${keyId}' was destroyed`, { keyId, providerId: this.id, file: this.keystorePath });
    }
    const kek = gcmOpen(master, decodeBase64String(e.wrapped)!, `vmseal keystore v1 key ${keyId}`);
    if (!kek || kek.length !== 32) {
      kek?.fill(0);
      throw new KeyError('ERR_KEYSTORE_CORRUPT', `the wrapped key '${keyId}' does not open (modified keystore entry)`, { keyId, file: this.keystorePath });
    }
    return kek;
  }
}

function checkDiskId(diskId: unknown): string {
  if (typeof diskId !== 'string' || !DISK_ID.test(diskId)) throw invalidArgument(expected('1..64 characters [A-Za-z0-9._-]', 'diskId', diskId));
  return diskId;
}

function checkKeyId(keyId: unknown): void {
  if (typeof keyId !== 'string' || keyId.length === 0 || keyId.length > 256) {
    throw invalidArgument(expected('a key id string', 'keyId', keyId));
  }
}

function passBytes(p: unknown): Buffer {
  if (typeof p === 'string' && p.length > 0) return Buffer.from(p, 'utf8');
  if (p instanceof Uint8Array && p.length > 0) return Buffer.from(p);
  throw invalidArgument(expected('a non-empty string or Buffer', 'passphrase', p));
}

function findEntry(store: Store, keyId: string, file: string): KeyEntry {
  const e = store.keys.find((k) => k.keyId === keyId);
  if (!e) throw new KeyError('ERR_KEYSTORE_NO_SUCH_KEY', `the keystore holds no key '${keyId}'`, { keyId, file });
  return e;
}

function checkOpens(master: Buffer, store: Store): boolean {
  const plain = gcmOpen(master, decodeBase64String(store.check)!, 'vmseal keystore v1 check');
  const ok = plain !== undefined && plain.equals(CHECK_TEXT);
  plain?.fill(0);
  return ok;
}
