/**
 * Opening and creating disks with encryption in mind: `openDisk` gives a plain VirtualDisk for a
 * plain disk and a decrypting EncryptedDisk for an encrypted one; `createEncryptedDisk` makes a new
 * encrypted disk under a fresh DEK.
 */
import { openDisk as openVmdk, createDisk as createVmdk } from '../vmdk/index.js';
import type { VirtualDisk, CreateDiskOptions, CreateSubformat } from '../vmdk/index.js';
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { expected } from '../errors.js';
import { createDataCipher, type DataCipherOptions } from './cipher.js';
import { DataCheckKey, dataCheckOf, parseDataCheck } from './data-check.js';
import { EncryptedDisk, type DataCheckState } from './encrypted-disk.js';
import { DiskError } from './errors.js';
import { jobLineError, journalJobError } from './interrupted-job.js';
import { bindingOf, generateDek, makeEncryptionParams, unlockDek, type KeyCache, type LockerSpec, type UnlockOptions } from './keying.js';
import { verifyAuthenticator } from '../keys/index.js';
import { backUnitZero, checkDataCheck } from './unit-zero.js';
import { checkLayers } from './layers.js';
import {
  DEFAULT_CIPHER,
  DEFAULT_ENCRYPTED_SUBFORMAT,
  DEFAULT_UNIT_SIZE,
  KEY_BYTES,
  UNENCRYPTABLE_SUBFORMATS,
  checkEncryptionChoice,
  encryptionLines,
  parseEncryption,
  type CipherName,
  type DataUnitSize,
  type EncryptionParams,
  type ParsedEncryption,
} from './params.js';

/** The journal an in-place job keeps beside a disk (src/pipeline); while it exists the disk is mid-job. */
export const JOURNAL_SUFFIX = '.vmseal-journal';

/** Refuse a disk whose journaled job (encrypt, rekey, rollback in place; a snapshot commit of it) did not finish: its data or descriptor is half converted. */
export function assertNoJournal(path: string): void {
  const journal = resolve(path) + JOURNAL_SUFFIX;
  if (existsSync(journal)) throw journalJobError(path, journal);
}

export interface OpenDiskOptions {
  /** Open for reading only (default: false). */
  readOnly?: boolean;
  /** How to unlock an encrypted disk. Required for one, refused for a plain one. */
  keys?: UnlockOptions;
  /** Native XTS threads per call (default: the pool size). */
  threads?: number;
}

/** The encryption state recorded in a disk's descriptor (null: plain). Reads no keys. */
export function encryptionOf(disk: { descriptor: { entries(): Iterable<readonly [string, string]> } | undefined; path: string }): ParsedEncryption | null {
  if (!disk.descriptor) return null;
  return parseEncryption(disk.descriptor.entries(), disk.path);
}

/** Read the encryption lines of a disk without opening it for data (no keys needed); null for a plain disk. */
export async function readEncryptionParams(path: string, options: { format?: 'vmdk' | 'raw' } = {}): Promise<EncryptionParams | null> {
  const disk = await openVmdk(path, { readOnly: true, allowEncrypted: true, ...(options.format ? { format: options.format } : {}) });
  try {
    return encryptionOf(disk)?.params ?? null;
  } finally {
    await disk.close();
  }
}

/**
 * @internal Wrap an already opened inner disk (holding ciphertext) after unlocking and checking its
 * authenticator and (format version 2) its data check.
 */
export async function unlockInner(inner: VirtualDisk, params: EncryptionParams, keys: UnlockOptions, opts: DataCipherOptions = {}): Promise<EncryptedDisk> {
  checkCapacity(inner, params);
  const key = await unlockDek(params, inner.capacity, keys, inner.path);
  try {
    return await wrapInner(inner, params, key, opts);
  } finally {
    key.fill(0);
  }
}

/**
 * @internal As unlockInner, with a DEK the caller unlocked already and keeps (and wipes): checked
 * against the disk's authenticator first. A server's live snapshot opens the child it just made
 * this way, with the DEK it unlocked before holding writes back (no second KDF or KMS round trip).
 */
export async function openWithDek(inner: VirtualDisk, params: EncryptionParams, dek: Buffer, opts: DataCipherOptions = {}): Promise<EncryptedDisk> {
  checkCapacity(inner, params);
  if (dek.length !== KEY_BYTES[params.cipher]) {
    throw new DiskError(
      'ERR_ENCRYPTION_METADATA',
      `${inner.path} says ${params.cipher}, which takes a ${KEY_BYTES[params.cipher]}-byte key, not ${dek.length}`,
    );
  }
  verifyAuthenticator(dek, bindingOf(params, inner.capacity), params.authenticator);
  return wrapInner(inner, params, dek, opts);
}

function checkCapacity(inner: VirtualDisk, params: EncryptionParams): void {
  if (inner.capacity % params.unitSize !== 0) {
    throw new DiskError(
      'ERR_ENCRYPTION_METADATA',
      `the capacity of ${inner.path} (${inner.capacity} bytes) is not a multiple of its ${params.unitSize}-byte data unit`,
    );
  }
}

/** The checks after the DEK matched the disk's own authenticator: the layers below, then the data check. */
async function wrapInner(inner: VirtualDisk, params: EncryptionParams, key: Buffer, opts: DataCipherOptions): Promise<EncryptedDisk> {
  let cipher: ReturnType<typeof createDataCipher> | undefined;
  try {
    checkLayers(inner, params, key);
    cipher = createDataCipher(params.cipher, key, params.unitSize, opts);
    // Version 1 has no data check: only a KEK rotation keeps an old descriptor from opening new data.
    const check: DataCheckState | undefined = params.formatVersion >= 2 ? await checkDataCheck(inner, params, key, cipher) : undefined;
    return new EncryptedDisk(inner.path, inner, params, cipher, check);
  } catch (err) {
    cipher?.dispose();
    throw err;
  }
}

/**
 * Open a disk (any VMDK subformat vmseal reads, or a raw image). A plain disk opens as the VMDK
 * layer's VirtualDisk; an encrypted one as an EncryptedDisk whose reads decrypt and writes encrypt —
 * after its KeySafe is unlocked and its authenticator checked, before any data is decrypted.
 *
 * Errors: ERR_DISK_ENCRYPTED (encrypted, no `keys`), ERR_NOT_ENCRYPTED (plain, `keys` given),
 * ERR_INTERRUPTED_JOB (an in-place job did not finish), ERR_ENCRYPTION_METADATA, the key layer's
 * ERR_WRONG_KEY / ERR_DISK_LOCKED / ERR_NO_KEY / ERR_BINDING, the VMDK layer's ERR_VMDK_*.
 */
export async function openDisk(path: string, options: OpenDiskOptions = {}): Promise<VirtualDisk | EncryptedDisk> {
  if (typeof path !== 'string' || path.length === 0) throw new DiskError('ERR_INVALID_ARGUMENT', expected('a file path', 'path', path));
  if (options === null || typeof options !== 'object') throw new DiskError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const { readOnly = false, keys } = options;
  if (keys !== undefined && (keys === null || typeof keys !== 'object')) {
    throw new DiskError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? }', 'keys', keys));
  }
  assertNoJournal(path);
  const inner = await openVmdk(path, { readOnly, allowEncrypted: true });
  try {
    const enc = encryptionOf(inner);
    if (!enc) {
      if (keys !== undefined) {
        throw new DiskError('ERR_NOT_ENCRYPTED', `${path} is not encrypted; open it without keys`);
      }
      return inner;
    }
    if (enc.job !== undefined) throw jobLineError(path, enc.job);
    if (keys === undefined) {
      throw new DiskError('ERR_DISK_ENCRYPTED', `${path} is encrypted (${enc.params.cipher}); give keys (a key provider or passphrase) to open it`);
    }
    return await unlockInner(inner, enc.params, keys, options.threads ? { threads: options.threads } : {});
  } catch (err) {
    await inner.close().catch(() => undefined);
    throw err;
  }
}

export interface CreateEncryptedDiskOptions {
  /** Virtual size in bytes (a multiple of unitSize). */
  capacity: number;
  /** Default 'monolithicSparse'. raw and streamOptimized are refused (ERR_UNSUPPORTED_OUTPUT). */
  subformat?: CreateSubformat;
  adapterType?: CreateDiskOptions['adapterType'];
  hwVersion?: number | string;
  /** Grain size in bytes for sparse subformats (the VMDK layer's default otherwise). */
  grainSize?: number;
  /** Default 'aes-256-xts'. */
  cipher?: CipherName;
  /** Default 512. */
  unitSize?: DataUnitSize;
  /** Who can unlock the new DEK: provider KEKs and/or passphrases (at least one). */
  lockers: LockerSpec[];
  cache?: KeyCache;
  threads?: number;
  /**
   * Flat subformats: write encrypted zeros over the whole capacity so that the new disk reads as
   * zeros (default: true; time proportional to the capacity). src/pipeline passes false because it
   * writes every byte itself.
   */
  fillFlat?: boolean;
  /** Called with bytes done while filling a flat disk. */
  onFill?: (bytesDone: number, bytesTotal: number) => void;
}

const FILL_CHUNK = 8 << 20;

/** Write encrypted zeros over [0, capacity) of a flat disk (a fresh flat file holds plaintext zeros, which do not decrypt to zeros). */
async function fillEncryptedZeros(disk: EncryptedDisk, onFill?: (done: number, total: number) => void): Promise<void> {
  const buf = Buffer.allocUnsafeSlow(Math.min(FILL_CHUNK, disk.capacity));
  for (let off = 0; off < disk.capacity; off += buf.length) {
    const n = Math.min(buf.length, disk.capacity - off);
    const view = buf.subarray(0, n);
    view.fill(0);
    await disk.dataCipher.encrypt(view, off / disk.unitSize);
    await disk.innerDisk.write(off, view);
    onFill?.(off + n, disk.capacity);
  }
  await disk.innerDisk.flush();
}

export function checkLockers(lockers: unknown): LockerSpec[] {
  if (!Array.isArray(lockers) || lockers.length === 0) {
    throw new DiskError(
      'ERR_INVALID_ARGUMENT',
      expected("a non-empty array of { kind: 'provider', provider } or { kind: 'passphrase', passphrase }", 'lockers', lockers),
    );
  }
  return lockers as LockerSpec[];
}

/** Create a new, empty encrypted disk (reads as zeros) under a fresh DEK sealed by `lockers`. */
export async function createEncryptedDisk(path: string, options: CreateEncryptedDiskOptions): Promise<EncryptedDisk> {
  if (typeof path !== 'string' || path.length === 0) throw new DiskError('ERR_INVALID_ARGUMENT', expected('a file path', 'path', path));
  if (options === null || typeof options !== 'object') throw new DiskError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const subformat = options.subformat ?? DEFAULT_ENCRYPTED_SUBFORMAT;
  const unencryptable = UNENCRYPTABLE_SUBFORMATS.get(subformat);
  if (unencryptable !== undefined) {
    throw new DiskError(
      'ERR_UNSUPPORTED_OUTPUT',
      `an encrypted disk cannot be written as ${subformat}: ${unencryptable}; choose a flat or sparse VMDK subformat`,
    );
  }
  const { cipher, unitSize } = checkEncryptionChoice(options.cipher ?? DEFAULT_CIPHER, options.unitSize ?? DEFAULT_UNIT_SIZE);
  const lockers = checkLockers(options.lockers);
  const capacity = options.capacity;
  if (!Number.isSafeInteger(capacity) || capacity <= 0 || capacity % unitSize !== 0) {
    throw new DiskError('ERR_INVALID_ARGUMENT', expected(`a positive multiple of ${unitSize}`, 'capacity', capacity));
  }
  const dek = generateDek(cipher);
  try {
    const made = await makeEncryptionParams(dek, { cipher, unitSize, capacity, lockers, ...(options.cache ? { cache: options.cache } : {}) });
    // The new disk reads as zeros: unit 0's plaintext is zeros.
    const zeroCheck = dataCheckOf(dek, made.diskId, unitSize, Buffer.alloc(unitSize));
    const params = { ...made, dataCheck: zeroCheck };
    const inner = await createVmdk(path, {
      capacity,
      subformat,
      ...(options.adapterType !== undefined ? { adapterType: options.adapterType } : {}),
      ...(options.hwVersion !== undefined ? { hwVersion: options.hwVersion } : {}),
      ...(options.grainSize !== undefined ? { grainSize: options.grainSize } : {}),
      descriptorLines: encryptionLines(params),
    });
    let disk: EncryptedDisk | undefined;
    try {
      const data = createDataCipher(cipher, dek, unitSize, options.threads ? { threads: options.threads } : {});
      try {
        // Unit 0 holds ciphertext of zeros from the start: a sparse disk's grain 0 is allocated now
        // (and never given back: a hole would read as zeros under any key); a flat one's first unit is
        // written before any fill.
        if (inner.grainSize !== undefined) await backUnitZero(inner, data);
        else {
          const unit0 = Buffer.alloc(unitSize);
          await data.encrypt(unit0, 0);
          await inner.write(0, unit0);
          await inner.flush();
        }
      } catch (err) {
        data.dispose();
        throw err;
      }
      const current = parseDataCheck(zeroCheck)!.committed;
      disk = new EncryptedDisk(inner.path, inner, params, data, { key: new DataCheckKey(dek), current, commitPending: false });
      if (inner.grainSize === undefined && options.fillFlat !== false) await fillEncryptedZeros(disk, options.onFill);
      return disk;
    } catch (err) {
      if (disk) await disk.close().catch(() => undefined);
      else await inner.close().catch(() => undefined);
      throw err;
    }
  } finally {
    dek.fill(0);
  }
}
