/**
 * The files of the local keystore: keystore.json (format below), master.key, and the checks that
 * they and their folder are private to their owner. No key is unwrapped here (local-provider.ts does
 * that); this module reads, validates and writes the documents.
 *
 *
 * Files in the home directory ($VMSEAL_HOME, default ~/.vmseal; created mode 0700):
 *   keystore.json   the keystore (mode 0600): KEKs, each AES-256-GCM-encrypted under the master key
 *   master.key      the master key (mode 0600), "vmseal-master-key-v1 <base64 of 32 bytes>\n" —
 *                   absent when the keystore is protected by a passphrase instead
 *   keystore.json.vmseal-lock   OFD-locked (src/util/lock.ts) while a process modifies the keystore
 *
 * keystore.json (version 2; version 1 is the same without "diskId" and the "retired" state, and is
 * still read — a keystore is written as version 2 only once it holds a key that needs it, so that
 * an older vmseal keeps reading a keystore that has no such key):
 *   { "format": "vmseal-keystore", "version": 2, "providerId": "local",
 *     "master": { "source": "keyfile" }
 *             | { "source": "passphrase", "kdf": "scrypt", "n": N, "r": r, "p": p, "salt": base64 },
 *     "check": base64(IV 12 ‖ AES-256-GCM(master, "vmseal keystore check") ‖ tag 16),   AAD "vmseal keystore v1 check"
 *     "keys": [ { "id": uuid, "name": string|null, "created": ISO time, "state": "active",
 *                 "diskId"?: the disk the key was created for alone (absent: a shared key),
 *                 "wrapped": base64(IV 12 ‖ AES-256-GCM(master, KEK 32) ‖ tag 16) }        AAD "vmseal keystore v1 key <id>"
 *             | { "id", "name", "created", "diskId"?, "state": "retired", "retired": ISO time, "wrapped" }
 *             | { "id", "name", "created", "diskId"?, "state": "destroyed", "destroyed": ISO time } ] }
 *
 * A retired key (a deep rekey replaced it) keeps its material, so that an old backup of the disk can
 * still be restored, but getKey refuses it (ERR_KEY_RETIRED) unless the provider was made with
 * allowRetired: an old copy of a descriptor must not silently open.
 *
 * The AAD binds each wrapped KEK to its id, so swapping two entries' `wrapped` is detected. Every write
 * is atomic (temp file, fsync, rename, fsync directory) under the lock file.
 */
import type { BigIntStats } from 'node:fs';
import { open, readFile, stat } from 'node:fs/promises';
import { KeyError, type KeyErrorCode } from './errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { canonicalBase64Length, decodeBase64String } from './base64.js';
import { checkScryptCost, GCM_IV, GCM_TAG } from './keystore-sealing.js';

export interface LocalKeyInfo {
  keyId: string;
  name: string | null;
  created: string;
  state: 'active' | 'retired' | 'destroyed';
  /** The disk the key was created for alone; absent for a shared key (a batch's, a `keys create` one). */
  diskId?: string;
  retired?: string;
  destroyed?: string;
}

export interface KeyEntry extends LocalKeyInfo {
  wrapped?: string;
}

export interface MasterSpec {
  source: 'keyfile' | 'passphrase';
  kdf?: 'scrypt';
  n?: number;
  r?: number;
  p?: number;
  salt?: string;
}

export interface Store {
  format: 'vmseal-keystore';
  version: 1 | 2;
  providerId: string;
  master: MasterSpec;
  check: string;
  keys: KeyEntry[];
}

/** A keystore or backup larger than this is not one. */
export const MAX_STORE_BYTES = 16 * 2 ** 20;
export const MASTER_PREFIX = 'vmseal-master-key-v1 ';

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
export function checkPrivate(mode: number, path: string, what: string, want: 0o600 | 0o700, code: KeyErrorCode): void {
  if (process.platform === 'win32' || (mode & 0o077) === 0) return;
  throw new KeyError(
    code,
    `the ${what} is accessible to group or others (mode ${(mode & 0o777).toString(8)}); run: chmod ${want.toString(8)} ${shellQuote(path)}`,
    { file: path },
  );
}

export function ioError(err: unknown, action: string, file: string): KeyError {
  if (err instanceof KeyError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return new KeyError('ERR_KEYSTORE_IO', `cannot ${action}: ${code ?? String(err)}`, { file, cause: err });
}

/** A disk id as the disk layer writes it (hex), or any short token a library caller chooses. */
export const DISK_ID = /^[A-Za-z0-9._-]{1,64}$/;
export const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
export const B64 = (v: unknown, min: number, max: number) =>
  typeof v === 'string' && ((n) => n !== undefined && n >= min && n <= max)(canonicalBase64Length(v));

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
  if (doc.version !== 1 && doc.version !== 2) bad('"version" (this vmseal reads versions 1 and 2)');
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
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  doc.keys.forEach((k: any, i: number) => {
    const f = (name: string) => bad(`"keys[${i}].${name}"`);
    if (k === null || typeof k !== 'object') bad(`"keys[${i}]"`);
    if (typeof k.keyId !== 'string' || k.keyId.length === 0 || k.keyId.length > 256 || ids.has(k.keyId)) f('keyId');
    ids.add(k.keyId);
    if (k.name !== null && typeof k.name !== 'string') f('name');
    if (typeof k.created !== 'string' || !ISO.test(k.created)) f('created');
    if (k.diskId !== undefined && (doc.version < 2 || !DISK_ID.test(k.diskId))) f('diskId');
    if (k.state === 'active' || (k.state === 'retired' && doc.version >= 2)) {
      if (!B64(k.wrapped, GCM_IV + 32 + GCM_TAG, GCM_IV + 32 + GCM_TAG)) f('wrapped');
      if (k.state === 'retired' && (typeof k.retired !== 'string' || !ISO.test(k.retired))) f('retired');
    } else if (k.state === 'destroyed') {
      if (k.wrapped !== undefined) f('wrapped');
      if (typeof k.destroyed !== 'string' || !ISO.test(k.destroyed)) f('destroyed');
    } else f('state');
  });
  return doc as Store;
}

/**
 * What tells one version of keystore.json from another without reading it: every write replaces the
 * file by a rename (a new inode), and the inode's change time moves with any other change (a write
 * in place, a chmod, a rename over it), so a file with the same identity holds the same bytes.
 */
export interface StoreFileId {
  dev: bigint;
  ino: bigint;
  size: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
  mode: number;
}

function fileId(st: BigIntStats): StoreFileId {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, mode: Number(st.mode) };
}

export function sameStoreFile(a: StoreFileId, b: StoreFileId): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.mode === b.mode;
}

/** The identity of keystore.json as it is now; undefined if it does not exist. */
export async function statStoreFile(file: string): Promise<StoreFileId | undefined> {
  try {
    return fileId(await stat(file, { bigint: true }));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(err, 'read the keystore', file);
  }
}

/**
 * Read and validate keystore.json, with the identity of the file read; undefined if it does not
 * exist. Mode and size are taken from the open handle, so they describe the very file that is read.
 */
export async function readStoreFileWithId(file: string): Promise<{ store: Store; id: StoreFileId } | undefined> {
  let raw: Buffer;
  let id: StoreFileId;
  try {
    const fh = await open(file, 'r');
    try {
      const st = await fh.stat({ bigint: true });
      id = fileId(st);
      checkPrivate(id.mode, file, 'keystore file', 0o600, 'ERR_KEYSTORE_PERMISSIONS');
      if (st.size > BigInt(MAX_STORE_BYTES))
        throw new KeyError('ERR_KEYSTORE_CORRUPT', `the keystore is ${st.size} bytes; at most ${MAX_STORE_BYTES} are accepted`, { file });
      raw = await fh.readFile();
    } finally {
      await fh.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw ioError(err, 'read the keystore', file);
  }
  return { store: validateStore(raw, file), id };
}

/** Read and validate keystore.json; undefined if it does not exist. */
export async function readStoreFile(file: string): Promise<Store | undefined> {
  return (await readStoreFileWithId(file))?.store;
}

/** Write keystore.json atomically (mode 0600); returns the identity of the file written (see StoreFileId). */
export async function writeStoreFile(file: string, store: Store): Promise<StoreFileId | undefined> {
  // Version 2 only when a key needs it: a version-1 keystore stays readable by an older vmseal.
  store.version = store.keys.some((k) => k.diskId !== undefined || k.state === 'retired') ? 2 : 1;
  try {
    await writeFileAtomic(file, Buffer.from(JSON.stringify(store, null, 2) + '\n', 'utf8'), 0o600);
  } catch (err) {
    throw ioError(err, 'write the keystore', file);
  }
  return statStoreFile(file);
}

/** Read master.key: "vmseal-master-key-v1 <base64 of 32 bytes>\n", mode 0600 (the caller wipes the key). */
export async function readMasterKeyFile(file: string): Promise<Buffer> {
  let st;
  try {
    st = await stat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new KeyError('ERR_KEYSTORE_MASTER_KEY', 'the master key file is missing (restore it, or restore the keys from a backup into a new keystore)', {
        file,
      });
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
