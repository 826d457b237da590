/**
 * The keystore backup file (`keys backup` / `keys restore`), version 1 or 2:
 *
 *   { "format": "vmseal-keystore-backup", "version": 1 | 2, "providerId": …, "created": ISO time,
 *     "kdf": { "name": "scrypt", "n", "r", "p", "salt": base64 },
 *     "data": base64(IV 12 ‖ AES-256-GCM(scrypt(passphrase), entries) ‖ tag 16) }    AAD "vmseal keystore backup v<version>"
 *
 * entries: one after another, strings UTF-8 with a u16be length prefix:
 *   version 1: keyId, name, hasName (1 byte: 0 = null name), created, KEK (32 bytes)
 *   version 2: keyId, name, hasName, created, state (1 byte: 0 active, 1 retired), retired (ISO time
 *              or empty), diskId (or empty), KEK (32 bytes)
 * Version 2 is written only when a key needs it (a retired key, or one made for a disk), so that an
 * older vmseal reads the backups of a keystore that has no such key. Retired keys are in a backup
 * because they are what opens old backups of a disk after a deep rekey.
 *
 * The key list is inside the GCM envelope, so a backup shows no key ids or names without the passphrase.
 */
import { randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import { KeyError } from './errors.js';
import { writeFileAtomic } from '../util/atomic-file.js';
import { decodeBase64String } from './base64.js';
import { checkScryptCost, gcmOpen, gcmSeal, scryptKey, type ScryptCost } from './keystore-sealing.js';
import { B64, DISK_ID, ISO, MAX_STORE_BYTES, ioError } from './keystore-file.js';

/** One key of a backup (the caller wipes `kek`). */
export interface BackupEntry {
  keyId: string;
  name: string | null;
  created: string;
  state: 'active' | 'retired';
  retired?: string;
  diskId?: string;
  kek: Buffer;
}

function lenPrefixed(s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length);
  return Buffer.concat([len, b]);
}

/** Write `entries` to `path` (mode 0600, atomically), sealed under `pass` with scrypt `cost`. */
export async function writeBackup(path: string, entries: readonly BackupEntry[], pass: Buffer, cost: ScryptCost, providerId: string): Promise<void> {
  const parts: Buffer[] = [];
  const version = entries.some((e) => e.state === 'retired' || e.diskId !== undefined) ? 2 : 1;
  try {
    for (const e of entries) {
      parts.push(lenPrefixed(e.keyId), lenPrefixed(e.name ?? ''), Buffer.from([e.name === null ? 0 : 1]), lenPrefixed(e.created));
      if (version === 2) parts.push(Buffer.from([e.state === 'retired' ? 1 : 0]), lenPrefixed(e.retired ?? ''), lenPrefixed(e.diskId ?? ''));
      parts.push(e.kek);
    }
    const plain = Buffer.concat(parts);
    const salt = randomBytes(16);
    const key = await scryptKey(pass, salt, cost);
    try {
      const data = gcmSeal(key, plain, `vmseal keystore backup v${version}`);
      const doc = {
        format: 'vmseal-keystore-backup',
        version,
        providerId,
        created: new Date().toISOString(),
        kdf: { name: 'scrypt', n: cost.n, r: cost.r, p: cost.p, salt: salt.toString('base64') },
        data: data.toString('base64'),
      };
      await writeFileAtomic(path, Buffer.from(JSON.stringify(doc, null, 2) + '\n'), 0o600).catch((err) => {
        throw ioError(err, 'write the backup file', path);
      });
    } finally {
      key.fill(0);
      plain.fill(0);
    }
  } finally {
    for (const p of parts) p.fill(0);
  }
}

/** Read and open a backup file; ERR_KEYSTORE_PASSPHRASE for a wrong passphrase, ERR_KEYSTORE_CORRUPT for a bad file. */
export async function readBackup(path: string, pass: Buffer): Promise<BackupEntry[]> {
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
  if (doc === null || typeof doc !== 'object' || doc.format !== 'vmseal-keystore-backup' || (doc.version !== 1 && doc.version !== 2))
    throw corrupt('bad "format" or "version"');
  const version = doc.version as 1 | 2;
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
  const plain = gcmOpen(key, data, `vmseal keystore backup v${version}`);
  key.fill(0);
  if (!plain) throw new KeyError('ERR_KEYSTORE_PASSPHRASE', 'wrong passphrase for the backup file (or the file was modified)', { file: path });
  const out: BackupEntry[] = [];
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
      let state: 'active' | 'retired' = 'active';
      let retired = '';
      let diskId = '';
      if (version === 2) {
        if (o + 1 > plain.length) throw corrupt('truncated key list');
        const s = plain[o++];
        if (s !== 0 && s !== 1) throw corrupt('bad key state');
        state = s === 1 ? 'retired' : 'active';
        retired = str();
        diskId = str();
        if ((state === 'retired') !== ISO.test(retired) || (diskId !== '' && !DISK_ID.test(diskId))) throw corrupt('bad key entry');
      }
      if (o + 32 > plain.length) throw corrupt('truncated key list');
      if (keyId.length === 0 || keyId.length > 256 || !ISO.test(created)) throw corrupt('bad key entry');
      out.push({
        keyId,
        name: hasName ? name : null,
        created,
        state,
        ...(state === 'retired' ? { retired } : {}),
        ...(diskId !== '' ? { diskId } : {}),
        kek: Buffer.from(plain.subarray(o, o + 32)),
      });
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
