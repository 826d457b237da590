import { createCipheriv, createDecipheriv, randomBytes, randomUUID, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { mkdir, open, readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { expected } from '../errors.js';
import { KeyError, invalidArgument, type KeyErrorCode } from './errors.js';
import { createFileAtomic, writeFileAtomic } from '../util/atomic-file.js';
import { withFileLock } from './file-lock.js';
import { decodeBase64String } from './base64.js';
import type { KeyProvider, KeyRef } from './provider.js';

/**
 * The embedded local key provider (vmseal's counterpart of vSphere's Native Key Provider).
 *
 * Files in the home directory ($VMSEAL_HOME, default ~/.vmseal; created mode 0700):
 *   keystore.json   the keystore (mode 0600): KEKs, each AES-256-GCM-encrypted under the master key
 *   master.key      the master key (mode 0600), "vmseal-master-key-v1 <base64 of 32 bytes>\n" —
 *                   absent when the keystore is protected by a passphrase instead
 *   keystore.json.vmseal-lock   OFD-locked (src/util/lock.ts) while a process modifies the keystore
 *
 * keystore.json (version 1):
 *   { "format": "vmseal-keystore", "version": 1, "providerId": "local",
 *     "master": { "source": "keyfile" }
 *             | { "source": "passphrase", "kdf": "scrypt", "n": N, "r": r, "p": p, "salt": base64 },
 *     "check": base64(IV 12 ‖ AES-256-GCM(master, "vmseal keystore check") ‖ tag 16),   AAD "vmseal keystore v1 check"
 *     "keys": [ { "id": uuid, "name": string|null, "created": ISO time, "state": "active",
 *                 "wrapped": base64(IV 12 ‖ AES-256-GCM(master, KEK 32) ‖ tag 16) }        AAD "vmseal keystore v1 key <id>"
 *             | { "id", "name", "created", "state": "destroyed", "destroyed": ISO time } ] }
 *
 * The AAD binds each wrapped KEK to its id, so swapping two entries' `wrapped` is detected. Every write
 * is atomic (temp file, fsync, rename, fsync directory) under the lock file.
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
}

export interface LocalKeyInfo {
  keyId: string;
  name: string | null;
  created: string;
  state: 'active' | 'destroyed';
  destroyed?: string;
}

interface KeyEntry extends LocalKeyInfo {
  wrapped?: string;
}

interface MasterSpec {
  source: 'keyfile' | 'passphrase';
  kdf?: 'scrypt';
  n?: number;
  r?: number;
  p?: number;
  salt?: string;
}

interface Store {
  format: 'vmseal-keystore';
  version: 1;
  providerId: string;
  master: MasterSpec;
  check: string;
  keys: KeyEntry[];
}

export const LOCAL_PROVIDER_DEFAULTS = Object.freeze({
  id: 'local',
  scrypt: Object.freeze({ n: 2 ** 17, r: 8, p: 1 }),
  lockTimeoutMs: 10_000,
});

const MAX_STORE_BYTES = 16 * 2 ** 20;
const MASTER_PREFIX = 'vmseal-master-key-v1 ';
const CHECK_TEXT = Buffer.from('vmseal keystore check', 'ascii');
const GCM_IV = 12;
const GCM_TAG = 16;

function gcmSeal(key: Buffer, plain: Uint8Array, aad: string): Buffer {
  const iv = randomBytes(GCM_IV);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([iv, body, c.getAuthTag()]);
}

/** Open GCM-sealed bytes; undefined if the key is wrong or the data was modified. */
function gcmOpen(key: Buffer, sealed: Buffer, aad: string): Buffer | undefined {
  if (sealed.length < GCM_IV + GCM_TAG) return undefined;
  const d = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, GCM_IV));
  d.setAAD(Buffer.from(aad, 'utf8'));
  d.setAuthTag(sealed.subarray(sealed.length - GCM_TAG));
  const out = d.update(sealed.subarray(GCM_IV, sealed.length - GCM_TAG));
  try {
    return Buffer.concat([out, d.final()]);
  } catch {
    return undefined;
  } finally {
    out.fill(0);
  }
}

/**
 * Quote a path for a POSIX shell, so the chmod command in a permission error can be pasted as is:
 * plain paths stay bare, anything else goes in single quotes (a quote inside becomes '\'').
 */
function shellQuote(path: string): string {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}

/**
 * The keystore's files and folder must be private to their owner: keystore.json holds the
 * wrapped KEKs (and, in passphrase mode, the scrypt salt that an offline guesser needs), and a folder
 * others can write lets them replace the keystore, the master key or the lock. Any group/other
 * permission bit is refused, with the exact command that fixes it. Not checked on Windows, where
 * the mode bits do not describe the ACL.
 */
function checkPrivate(mode: number, path: string, what: string, want: 0o600 | 0o700, code: KeyErrorCode): void {
  if (process.platform === 'win32' || (mode & 0o077) === 0) return;
  throw new KeyError(
    code,
    `the ${what} is accessible to group or others (mode ${(mode & 0o777).toString(8)}); run: chmod ${want.toString(8)} ${shellQuote(path)}`,
    { file: path },
  );
}

function scryptKey(pass: Uint8Array, salt: Buffer, cost: { n: number; r: number; p: number }): Promise<Buffer> {
  return new Promise((res, rej) =>
    scryptCb(pass, salt, 32, { N: cost.n, r: cost.r, p: cost.p, maxmem: 128 * cost.n * cost.r + 128 * cost.r * cost.p + 2 ** 20 }, (e, k) => (e ? rej(e) : res(k))),
  );
}

function checkScryptCost(s: unknown, name: string): { n: number; r: number; p: number } {
  const c = s as { n?: unknown; r?: unknown; p?: unknown } | null;
  const ok =
    c !== null &&
    typeof c === 'object' &&
    Number.isInteger(c.n) &&
    (c.n as number) >= 2 &&
    (c.n as number) <= 2 ** 20 &&
    ((c.n as number) & ((c.n as number) - 1)) === 0 &&
    Number.isInteger(c.r) &&
    (c.r as number) >= 1 &&
    (c.r as number) <= 32 &&
    Number.isInteger(c.p) &&
    (c.p as number) >= 1 &&
    (c.p as number) <= 16 &&
    128 * (c.n as number) * (c.r as number) <= 512 * 2 ** 20;
  if (!ok) throw invalidArgument(expected('{ n: power of two 2..2^20, r: 1..32, p: 1..16 }', name, s));
  return { n: c!.n as number, r: c!.r as number, p: c!.p as number };
}

function ioError(err: unknown, action: string, file: string): KeyError {
  if (err instanceof KeyError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return new KeyError('ERR_KEYSTORE_IO', `cannot ${action}: ${code ?? String(err)}`, { file, cause: err });
}

export class LocalKeyProvider implements KeyProvider {
  readonly id: string;
  readonly home: string;
  readonly keystorePath: string;
  readonly masterKeyPath: string;
  readonly lockPath: string;
  private readonly cost: { n: number; r: number; p: number };
  private readonly lockTimeoutMs: number;
  private passphrase: Buffer | undefined;
  private readonly usesPassphrase: boolean;
  private master: Buffer | undefined;

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
    return store.keys.map(({ keyId, name, created, state, destroyed }) => ({ keyId, name, created, state, ...(destroyed ? { destroyed } : {}) }));
  }

  /** Make a new random AES-256 KEK, stored wrapped in the keystore (created first if absent). */
  async createKey(opts: { name?: string } = {}): Promise<KeyRef> {
    if (opts === null || typeof opts !== 'object') throw invalidArgument(expected('an object', 'options', opts));
    const name = opts.name ?? null;
    if (name !== null && (typeof name !== 'string' || name.length > 256)) {
      throw invalidArgument(expected('a string of at most 256 characters', 'name', name));
    }
    await this.init();
    const keyId = randomUUID();
    const kek = randomBytes(32);
    try {
      await this.modify(async (store, master) => {
        store.keys.push({
          keyId,
          name,
          created: new Date().toISOString(),
          state: 'active',
          wrapped: gcmSeal(master, kek, `vmseal keystore v1 key ${keyId}`).toString('base64'),
        });
      });
    } finally {
      kek.fill(0);
    }
    return { providerId: this.id, keyId };
  }

  /** The 32-byte KEK `keyId` (the caller wipes it). */
  async getKey(keyId: string): Promise<Buffer> {
    checkKeyId(keyId);
    const store = await this.openStore();
    return this.unwrap(store, keyId, this.master!);
  }

  /** Destroy a KEK: its wrapped material is removed from the keystore; the entry remains as a tombstone. */
  async destroyKey(keyId: string): Promise<void> {
    checkKeyId(keyId);
    await this.modify(async (store) => {
      const e = findEntry(store, keyId, this.keystorePath);
      if (e.state === 'destroyed') throw new KeyError('ERR_KEYSTORE_KEY_DESTROYED', `key '${keyId}' was already destroyed`, { keyId, providerId: this.id });
      e.state = 'destroyed';
      e.destroyed = new Date().toISOString();
      delete e.wrapped;
    });
  }

  /**
   * Write every active KEK to `file` (mode 0600, atomically), encrypted under `passphrase` with scrypt and
   * AES-256-GCM. Returns the number of keys written.
   */
  async backup(file: string, passphrase: string | Uint8Array): Promise<{ keys: number }> {
    if (typeof file !== 'string' || file === '') throw invalidArgument(expected('a file path', 'file', file));
    const pass = passBytes(passphrase);
    const store = await this.openStore();
    const parts: Buffer[] = [];
    let count = 0;
    try {
      for (const e of store.keys) {
        if (e.state !== 'active') continue;
        const kek = this.unwrap(store, e.keyId, this.master!);
        parts.push(lenPrefixed(e.keyId), lenPrefixed(e.name ?? ''), Buffer.from([e.name === null ? 0 : 1]), lenPrefixed(e.created), kek);
        count++;
      }
      const plain = Buffer.concat(parts);
      const salt = randomBytes(16);
      const key = await scryptKey(pass, salt, this.cost);
      try {
        const data = gcmSeal(key, plain, 'vmseal keystore backup v1');
        const doc = {
          format: 'vmseal-keystore-backup',
          version: 1,
          providerId: this.id,
          created: new Date().toISOString(),
          kdf: { name: 'scrypt', n: this.cost.n, r: this.cost.r, p: this.cost.p, salt: salt.toString('base64') },
          data: data.toString('base64'),
        };
        await writeFileAtomic(resolve(file), Buffer.from(JSON.stringify(doc, null, 2) + '\n'), 0o600).catch((err) => {
          throw ioError(err, 'write the backup file', resolve(file));
        });
      } finally {
        key.fill(0);
        plain.fill(0);
      }
    } finally {
      for (const p of parts) p.fill(0);
      pass.fill(0);
    }
    return { keys: count };
  }

  /**
   * Add the keys of a backup file to this keystore (created if absent). A key already present with the
   * same material is left as is; one present with different material is ERR_KEYSTORE_CONFLICT (nothing is
   * written); a destroyed key comes back active.
   */
  async restore(file: string, passphrase: string | Uint8Array): Promise<{ added: number; unchanged: number }> {
    if (typeof file !== 'string' || file === '') throw invalidArgument(expected('a file path', 'file', file));
    const path = resolve(file);
    const pass = passBytes(passphrase);
    let entries: Array<{ keyId: string; name: string | null; created: string; kek: Buffer }>;
    try {
      entries = await readBackup(path, pass);
    } finally {
      pass.fill(0);
    }
    let added = 0;
    let unchanged = 0;
    try {
      await this.init();
      await this.modify(async (store, master) => {
        added = 0;
        unchanged = 0;
        for (const b of entries) {
          const e = store.keys.find((k) => k.keyId === b.keyId);
          if (e && e.state === 'active') {
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
          const wrapped = gcmSeal(master, b.kek, `vmseal keystore v1 key ${b.keyId}`).toString('base64');
          if (e) {
            e.state = 'active';
            e.wrapped = wrapped;
            delete e.destroyed;
          } else {
            store.keys.push({ keyId: b.keyId, name: b.name, created: b.created, state: 'active', wrapped });
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
      master = await this.readMasterKeyFile();
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

  private async readMasterKeyFile(): Promise<Buffer> {
    const file = this.masterKeyPath;
    let st;
    try {
      st = await stat(file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the master key file is missing (restore it, or restore the keys from a backup into a new keystore)', { file });
      }
      throw ioError(err, 'read the master key file', file);
    }
    // ERR_KEYSTORE_MASTER_KEY (not ERR_KEYSTORE_PERMISSIONS): the code this check has always had.
    checkPrivate(st.mode, file, 'master key file', 0o600, 'ERR_KEYSTORE_MASTER_KEY');
    if (st.size > 1024) throw new KeyError('ERR_KEYSTORE_MASTER_KEY', `the master key file is ${st.size} bytes; expected a vmseal master key`, { file });
    let raw: Buffer;
    try {
      raw = await readFile(file);
    } catch (err) {
      throw ioError(err, 'read the master key file', file);
    }
    try {
      const text = raw.toString('latin1');
      const m = /^vmseal-master-key-v1 ([A-Za-z0-9+/]{43}=)\n?$/.exec(text);
      const key = m ? decodeBase64String(m[1]!) : undefined;
      if (!key || key.length !== 32) throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the master key file is not a vmseal master key', { file });
      return key;
    } finally {
      raw.fill(0);
    }
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
      master = await this.readMasterKeyFile();
      if (!checkOpens(master, store)) {
        master.fill(0);
        throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the master key file does not open this keystore', { file: this.masterKeyPath });
      }
    }
    this.setMaster(master);
    return master;
  }

  /** Read and validate keystore.json; undefined if absent and !required. */
  private async readStore(required: true): Promise<Store>;
  private async readStore(required: boolean): Promise<Store | undefined>;
  private async readStore(required: boolean): Promise<Store | undefined> {
    const file = this.keystorePath;
    await this.checkHome();
    let raw: Buffer;
    try {
      // Mode and size are taken from the open handle, so they describe the very file that is read.
      const fh = await open(file, 'r');
      try {
        const st = await fh.stat();
        checkPrivate(st.mode, file, 'keystore file', 0o600, 'ERR_KEYSTORE_PERMISSIONS');
        if (st.size > MAX_STORE_BYTES) throw new KeyError('ERR_KEYSTORE_CORRUPT', `the keystore is ${st.size} bytes; at most ${MAX_STORE_BYTES} are accepted`, { file });
        raw = await fh.readFile();
      } finally {
        await fh.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        if (!required) return undefined;
        throw new KeyError('ERR_KEYSTORE_MISSING', 'there is no keystore (create a key or run init first)', { file });
      }
      throw ioError(err, 'read the keystore', file);
    }
    return validateStore(raw, file);
  }

  private async openStore(): Promise<Store> {
    const store = await this.readStore(true);
    await this.unlockMaster(store);
    return store;
  }

  private async writeStore(store: Store): Promise<void> {
    try {
      await writeFileAtomic(this.keystorePath, Buffer.from(JSON.stringify(store, null, 2) + '\n', 'utf8'), 0o600);
    } catch (err) {
      throw ioError(err, 'write the keystore', this.keystorePath);
    }
  }

  /** Read-modify-write under the lock file. */
  private async modify(change: (store: Store, master: Buffer) => Promise<void>): Promise<void> {
    await this.ensureHome();
    await withFileLock(this.lockPath, this.lockTimeoutMs, async () => {
      const store = await this.readStore(true);
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

function lenPrefixed(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const B64 = (v: unknown, min: number, max: number) => typeof v === 'string' && ((b) => b !== undefined && b.length >= min && b.length <= max)(decodeBase64String(v));

function validateStore(raw: Buffer, file: string): Store {
  const bad = (field: string): never => {
    throw new KeyError('ERR_KEYSTORE_CORRUPT', `the keystore is not a valid vmseal keystore: bad or missing ${field}`, { file });
  };
  let doc: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new KeyError('ERR_KEYSTORE_CORRUPT', 'the keystore is not valid JSON', { file });
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) bad('top-level object');
  if (doc.format !== 'vmseal-keystore') bad('"format"');
  if (doc.version !== 1) bad('"version" (this vmseal reads version 1)');
  if (typeof doc.providerId !== 'string') bad('"providerId"');
  const m = doc.master;
  if (m === null || typeof m !== 'object') bad('"master"');
  if (m.source === 'passphrase') {
    if (m.kdf !== 'scrypt') bad('"master.kdf"');
    try {
      checkScryptCost({ n: m.n, r: m.r, p: m.p }, 'master');
    } catch {
      bad('"master.n/r/p"');
    }
    if (!B64(m.salt, 8, 64)) bad('"master.salt"');
  } else if (m.source !== 'keyfile') bad('"master.source"');
  if (!B64(doc.check, GCM_IV + GCM_TAG + 1, 256)) bad('"check"');
  if (!Array.isArray(doc.keys)) bad('"keys"');
  const ids = new Set<string>();
  doc.keys.forEach((k: any, i: number) => { // eslint-disable-line @typescript-eslint/no-explicit-any
    const f = (name: string) => bad(`"keys[${i}].${name}"`);
    if (k === null || typeof k !== 'object') bad(`"keys[${i}]"`);
    if (typeof k.keyId !== 'string' || k.keyId.length === 0 || k.keyId.length > 256 || ids.has(k.keyId)) f('keyId');
    ids.add(k.keyId);
    if (k.name !== null && typeof k.name !== 'string') f('name');
    if (typeof k.created !== 'string' || !ISO.test(k.created)) f('created');
    if (k.state === 'active') {
      if (!B64(k.wrapped, GCM_IV + 32 + GCM_TAG, GCM_IV + 32 + GCM_TAG)) f('wrapped');
    } else if (k.state === 'destroyed') {
      if (k.wrapped !== undefined) f('wrapped');
      if (typeof k.destroyed !== 'string' || !ISO.test(k.destroyed)) f('destroyed');
    } else f('state');
  });
  return doc as Store;
}

async function readBackup(path: string, pass: Buffer): Promise<Array<{ keyId: string; name: string | null; created: string; kek: Buffer }>> {
  const corrupt = (what: string) => new KeyError('ERR_KEYSTORE_CORRUPT', `not a valid vmseal keystore backup: ${what}`, { file: path });
  let raw: Buffer;
  try {
    const st = await stat(path);
    if (st.size > MAX_STORE_BYTES) throw corrupt(`${st.size} bytes is too large`);
    raw = await readFile(path);
  } catch (err) {
    throw ioError(err, 'read the backup file', path);
  }
  let doc: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  try {
    doc = JSON.parse(raw.toString('utf8'));
  } catch {
    throw corrupt('not JSON');
  }
  if (doc === null || typeof doc !== 'object' || doc.format !== 'vmseal-keystore-backup' || doc.version !== 1) throw corrupt('bad "format" or "version"');
  const k = doc.kdf;
  if (k === null || typeof k !== 'object' || k.name !== 'scrypt' || !B64(k.salt, 8, 64)) throw corrupt('bad "kdf"');
  let cost;
  try {
    cost = checkScryptCost({ n: k.n, r: k.r, p: k.p }, 'kdf');
  } catch {
    throw corrupt('bad "kdf" cost');
  }
  if (typeof doc.data !== 'string') throw corrupt('bad "data"');
  const data = decodeBase64String(doc.data);
  if (!data) throw corrupt('bad "data"');
  const key = await scryptKey(pass, decodeBase64String(k.salt)!, cost);
  const plain = gcmOpen(key, data, 'vmseal keystore backup v1');
  key.fill(0);
  if (!plain) throw new KeyError('ERR_KEYSTORE_PASSPHRASE', 'wrong passphrase for the backup file (or the file was modified)', { file: path });
  // Binary layout (all strings UTF-8, u16be length-prefixed): keyId, name, hasName (1 byte), created, KEK (32)
  const out: Array<{ keyId: string; name: string | null; created: string; kek: Buffer }> = [];
  try {
    let o = 0;
    const str = () => {
      if (o + 2 > plain.length) throw corrupt('truncated key list');
      const n = plain.readUInt16BE(o);
      if (o + 2 + n > plain.length) throw corrupt('truncated key list');
      const s = plain.toString('utf8', o + 2, o + 2 + n);
      o += 2 + n;
      return s;
    };
    while (o < plain.length) {
      const keyId = str();
      const name = str();
      if (o + 1 > plain.length) throw corrupt('truncated key list');
      const hasName = plain[o++] === 1;
      const created = str();
      if (o + 32 > plain.length) throw corrupt('truncated key list');
      if (keyId.length === 0 || keyId.length > 256 || !ISO.test(created)) throw corrupt('bad key entry');
      out.push({ keyId, name: hasName ? name : null, created, kek: Buffer.from(plain.subarray(o, o + 32)) });
      o += 32;
    }
  } catch (err) {
    for (const e of out) e.kek.fill(0);
    throw err;
  } finally {
    plain.fill(0);
  }
  return out;
}
