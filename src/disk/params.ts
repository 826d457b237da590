/**
 * The encryption lines of an encrypted VMDK descriptor (docs/format.md is the specification).
 *
 * They stand right after `createType`, in this order, values always double-quoted:
 *
 *     encryption.format = "vmseal/2"              (or "vmseal/1": no data check)
 *     encryption.dataCheck = "<hex>.<hex|--…>"     version 2 only: ties the descriptor to its data (data-check.ts)
 *     encryption.cipher = "aes-256-xts"            | "aes-128-xts"
 *     encryption.dataUnitSize = "512"              | "4096"
 *     encryption.diskId = "<32 lowercase hex>"     16 random bytes naming this disk (shared by every layer of a chain)
 *     encryption.layerId = "<32 lowercase hex>"    version 3 only: 16 random bytes naming this layer of a snapshot chain
 *     encryption.parentLayerId = "<32 hex>"        version 3, snapshot children only: the parent layer's layerId
 *     encryption.authenticator = "<keys layer>"    binds the lines above + capacity to the DEK
 *     encryption.keySafe = "vmware:key/list/(…)"   the DEK, wrapped once per locker
 *     encryption.job = "<operation>"               only while an in-place job runs (see src/pipeline)
 *
 * Every value is printable ASCII without `"`, `=` and the substrings `CID`, `parentFileNameHint`
 * and `createType` (qemu finds header fields by substring search anywhere in the text).
 *
 * This module is also the one owner of the encryption policy that the layers above (pipeline, CLI)
 * apply: which ciphers and data-unit sizes a disk may use, the defaults, and which subformats can
 * carry an encrypted disk. The cipher names and DEK lengths are defined one layer down, in
 * src/keys/dek.ts (the key layer must name ciphers in KeySafe dicts and cannot import upwards);
 * everything here is built on them, and nothing above restates them.
 */
import { expectedOneOf } from '../errors.js';
import { DISK_CIPHERS, dekLength, type DiskCipher } from '../keys/dek.js';
// The list alone, not the vmdk barrel: the CLI's grammar imports this module at start-up.
import { CREATE_SUBFORMATS, type CreateSubformat } from '../vmdk/subformats.js';
import { parseDataCheck } from './data-check.js';
import { DiskError } from './errors.js';

export type CipherName = DiskCipher;
export type DataUnitSize = 512 | 4096;

/** The version vmseal writes; version 1 (no data check) is still read. */
export const FORMAT_VERSION = 2;
/** Version 3 is version 2 plus the layer lines of snapshot chains (written only on chain layers). */
const READ_VERSIONS: readonly number[] = [1, 2, 3];
/** The version of every layer of an encrypted snapshot chain. */
export const LAYERED_VERSION = 3;
export const FORMAT_TAG = `vmseal/${FORMAT_VERSION}`;
export const CIPHERS: readonly CipherName[] = DISK_CIPHERS;
/** 512 matches the sector (what dm-crypt and vSphere use); 4096 matches 4Kn drives and is faster. */
export const UNIT_SIZES: readonly DataUnitSize[] = [512, 4096];
/**
 * The largest data-unit size. Chunks of the streaming engine and in-place alignments are multiples
 * of it, so that every chunk holds whole units whatever the disk's unit size.
 */
export const MAX_UNIT_SIZE: DataUnitSize = 4096;
export const DEFAULT_CIPHER: CipherName = 'aes-256-xts';
export const DEFAULT_UNIT_SIZE: DataUnitSize = 512;
/** The subformat of a new encrypted disk when none is asked for. */
export const DEFAULT_ENCRYPTED_SUBFORMAT: CreateSubformat = 'monolithicSparse';
/** Key length in bytes of each cipher's DEK (Key1 ‖ Key2). */
export const KEY_BYTES: Readonly<Record<CipherName, number>> = Object.freeze(
  Object.fromEntries(CIPHERS.map((c) => [c, dekLength(c)])) as Record<CipherName, number>,
);

/**
 * Subformats that cannot hold an encrypted disk, each with why: a raw image has no descriptor for
 * the encryption lines, and streamOptimized compresses grains (pointless on ciphertext; vSphere
 * refuses to export encrypted disks that way too).
 */
export const UNENCRYPTABLE_SUBFORMATS: ReadonlyMap<string, string> = new Map([
  ['raw', 'a raw image has no descriptor to carry the key'],
  ['streamOptimized', 'compressing ciphertext is pointless and vSphere refuses it too'],
]);
/** The subformats an encrypted disk can be written as. */
export const ENCRYPTABLE_SUBFORMATS: readonly CreateSubformat[] = CREATE_SUBFORMATS.filter((s) => !UNENCRYPTABLE_SUBFORMATS.has(s));

/** What an encrypted copy of a disk in an unencryptable subformat is written as, when none is asked. */
const ENCRYPTED_REPLACEMENT: Readonly<Record<string, CreateSubformat>> = { raw: 'monolithicFlat', streamOptimized: 'monolithicSparse' };

/**
 * The subformat an encrypted copy of a disk in `subformat` takes by default: the same, except that
 * a raw image becomes monolithicFlat (its extent is the same bytes, encrypted) and streamOptimized
 * becomes monolithicSparse (the same allocation, without compression).
 */
export function encryptedSubformatFor(subformat: string): string {
  return ENCRYPTED_REPLACEMENT[subformat] ?? subformat;
}

/** True when an encrypted disk can be written in `subformat`. */
export function canEncryptSubformat(subformat: string): boolean {
  return !UNENCRYPTABLE_SUBFORMATS.has(subformat);
}

/** Check a cipher and data-unit size asked for a new encrypted disk (ERR_INVALID_ARGUMENT). */
export function checkEncryptionChoice(cipher: unknown, unitSize: unknown): { cipher: CipherName; unitSize: DataUnitSize } {
  if (!(CIPHERS as readonly unknown[]).includes(cipher)) {
    throw new DiskError('ERR_INVALID_ARGUMENT', expectedOneOf(CIPHERS, 'cipher', cipher));
  }
  if (!(UNIT_SIZES as readonly unknown[]).includes(unitSize)) {
    throw new DiskError('ERR_INVALID_ARGUMENT', expectedOneOf(UNIT_SIZES, 'unitSize', unitSize));
  }
  return { cipher: cipher as CipherName, unitSize: unitSize as DataUnitSize };
}
/** The longest value vmseal writes or accepts (qemu and libvmdk were probed with 4 KiB values). */
export const MAX_VALUE_LENGTH = 4096;

export const LINE = {
  format: 'encryption.format',
  dataCheck: 'encryption.dataCheck',
  cipher: 'encryption.cipher',
  unitSize: 'encryption.dataUnitSize',
  diskId: 'encryption.diskId',
  layerId: 'encryption.layerId',
  parentLayerId: 'encryption.parentLayerId',
  authenticator: 'encryption.authenticator',
  keySafe: 'encryption.keySafe',
  job: 'encryption.job',
} as const;

const KNOWN_KEYS = new Set<string>(Object.values(LINE));

/** The parsed encryption lines of a disk. */
export interface EncryptionParams {
  formatVersion: number;
  cipher: CipherName;
  unitSize: DataUnitSize;
  diskId: string;
  authenticator: string;
  keySafe: string;
  /** Version 2 and 3: the data check line's value (data-check.ts); absent in version 1. */
  dataCheck?: string;
  /** Version 3: this layer's id in a snapshot chain (bound by the authenticator). */
  layerId?: string;
  /** Version 3, a snapshot child: its parent layer's layerId (bound by the authenticator). */
  parentLayerId?: string;
}

/** What the authenticator binds (with the DEK): everything about the data layout and identity. */
export interface BoundParams {
  formatVersion: number;
  cipher: CipherName;
  unitSize: DataUnitSize;
  capacity: number;
  diskId: string;
}

/** True when a descriptor key belongs to disk encryption (ours, VMware's or a future version's). */
export function isEncryptionKey(key: string): boolean {
  const k = key.toLowerCase();
  return k.startsWith('encryption.') || k.startsWith('ddb.encryption.');
}

const FORBIDDEN_SUBSTRINGS = ['CID', 'parentFileNameHint', 'createType'];

/** Printable ASCII (0x21–0x7e) without '"' and '=', the characters unsafeValueReason accepts. */
const SAFE_CHARACTERS = /^[\x21\x23-\x3c\x3e-\x7e]*$/;

/** Why `value` cannot stand in a descriptor line, or null when it can. */
export function unsafeValueReason(value: string): string | null {
  if (value.length === 0) return 'it is empty';
  if (value.length > MAX_VALUE_LENGTH) return `it is ${value.length} characters long (at most ${MAX_VALUE_LENGTH})`;
  // The character loop below finds what to name; a value without any bad character (every KeySafe
  // and authenticator a job writes, checked twice per new disk) is told by one regular expression.
  if (!SAFE_CHARACTERS.test(value)) {
    for (let i = 0; i < value.length; i++) {
      const c = value.charCodeAt(i);
      if (c < 0x21 || c > 0x7e) return `it contains the character code ${c} at index ${i} (printable ASCII only)`;
      if (c === 0x22) return `it contains '"' at index ${i}`;
      if (c === 0x3d) return `it contains '=' at index ${i}`;
    }
  }
  for (const s of FORBIDDEN_SUBSTRINGS) {
    if (value.includes(s)) return `it contains the substring "${s}", which qemu mistakes for a header field`;
  }
  return null;
}

export function assertSafeValue(key: string, value: string): void {
  const why = unsafeValueReason(value);
  if (why) throw new DiskError('ERR_ENCRYPTION_METADATA', `descriptor value of ${key} cannot be written: ${why}`);
}

export function newDiskId(random: (n: number) => Buffer): string {
  return random(16).toString('hex');
}

/** The lines to place right after createType, in their fixed order. */
export function encryptionLines(p: EncryptionParams, job?: string): [string, string][] {
  const lines: [string, string][] = [[LINE.format, `vmseal/${p.formatVersion}`]];
  if (p.formatVersion >= 2) {
    // Second, so that it sits in the first sector of an embedded descriptor (a one-sector update).
    if (p.dataCheck === undefined)
      throw new DiskError('ERR_ENCRYPTION_METADATA', `format version ${p.formatVersion} needs a data check, and none was computed`);
    lines.push([LINE.dataCheck, p.dataCheck]);
  }
  lines.push([LINE.cipher, p.cipher], [LINE.unitSize, String(p.unitSize)], [LINE.diskId, p.diskId]);
  if (p.formatVersion >= LAYERED_VERSION) {
    if (p.layerId === undefined) throw new DiskError('ERR_ENCRYPTION_METADATA', `format version ${p.formatVersion} needs a layer id`);
    lines.push([LINE.layerId, p.layerId]);
    if (p.parentLayerId !== undefined) lines.push([LINE.parentLayerId, p.parentLayerId]);
  }
  lines.push([LINE.authenticator, p.authenticator], [LINE.keySafe, p.keySafe]);
  if (job !== undefined) lines.push([LINE.job, job]);
  for (const [k, v] of lines) assertSafeValue(k, v);
  return lines;
}

export function boundParams(p: EncryptionParams, capacity: number): BoundParams {
  return { formatVersion: p.formatVersion, cipher: p.cipher, unitSize: p.unitSize, capacity, diskId: p.diskId };
}

/** The encryption state found in a descriptor's entries. */
export interface ParsedEncryption {
  params: EncryptionParams;
  /** The in-place job that was running when the disk was last written, if it did not finish. */
  job: string | undefined;
}

/**
 * Read the encryption lines from a descriptor's key/value entries. Returns null when the descriptor
 * has no encryption key at all (a plain disk); throws ERR_ENCRYPTION_METADATA when it has some but
 * they do not make a disk vmseal can open (missing, malformed, unknown version, another product's).
 */
export function parseEncryption(entries: Iterable<readonly [string, string]>, where: string): ParsedEncryption | null {
  const found = new Map<string, string>();
  for (const [key, value] of entries) {
    if (!isEncryptionKey(key)) continue;
    if (found.has(key)) throw meta(where, `the line ${key} appears twice`);
    found.set(key, value);
  }
  if (found.size === 0) return null;

  const format = found.get(LINE.format);
  if (format === undefined && found.size === 1 && found.has(LINE.job)) {
    // A plain layer a snapshot commit is merging into (src/pipeline/commit.ts): half merged.
    throw new DiskError(
      'ERR_INTERRUPTED_JOB',
      `${where} is in the middle of an interrupted ${found.get(LINE.job)!.slice(0, 40)} job; finish it first (vmseal resume on the top of its chain)`,
    );
  }
  if (format === undefined) {
    const vmware = found.has('encryption.data') || found.has('encryption.keySafe');
    throw meta(
      where,
      vmware
        ? 'it is encrypted, but not by vmseal (no encryption.format line; VMware vSphere/Workstation encryption keeps the keys in the .vmx and is not supported)'
        : `it has encryption lines (${[...found.keys()].join(', ')}) but no encryption.format line`,
    );
  }
  const m = /^vmseal\/([1-9][0-9]{0,5})$/.exec(format);
  if (!m) throw meta(where, `encryption.format is not of the form "vmseal/<version>"`);
  const formatVersion = Number(m[1]);
  if (!READ_VERSIONS.includes(formatVersion)) {
    throw meta(where, `encryption.format version ${formatVersion} is not supported (this vmseal reads versions ${READ_VERSIONS.join(' and ')})`);
  }
  for (const key of found.keys()) {
    const layered = key === LINE.layerId || key === LINE.parentLayerId;
    if (!KNOWN_KEYS.has(key) || (key === LINE.dataCheck && formatVersion < 2) || (layered && formatVersion < LAYERED_VERSION))
      throw meta(where, `unknown encryption line ${key} for format version ${formatVersion}`);
  }
  const need = (key: string): string => {
    const v = found.get(key);
    if (v === undefined) throw meta(where, `the line ${key} is missing`);
    const why = unsafeValueReason(v);
    if (why) throw meta(where, `the value of ${key} is invalid: ${why}`);
    return v;
  };
  const cipher = need(LINE.cipher);
  if (!(CIPHERS as readonly string[]).includes(cipher)) {
    throw meta(where, `${LINE.cipher} must be one of ${CIPHERS.join(', ')}`);
  }
  const unitText = need(LINE.unitSize);
  const unitSize = Number(unitText);
  if (!/^[0-9]+$/.test(unitText) || !(UNIT_SIZES as readonly number[]).includes(unitSize)) {
    throw meta(where, `${LINE.unitSize} must be one of ${UNIT_SIZES.join(', ')}`);
  }
  const diskId = need(LINE.diskId);
  if (!/^[0-9a-f]{32}$/.test(diskId)) throw meta(where, `${LINE.diskId} must be 32 lowercase hexadecimal digits`);
  const layerId = formatVersion >= LAYERED_VERSION ? need(LINE.layerId) : undefined;
  const parentLayerId = found.has(LINE.parentLayerId) ? need(LINE.parentLayerId) : undefined;
  for (const [key, id] of [
    [LINE.layerId, layerId],
    [LINE.parentLayerId, parentLayerId],
  ] as const) {
    if (id !== undefined && !/^[0-9a-f]{32}$/.test(id)) throw meta(where, `${key} must be 32 lowercase hexadecimal digits`);
  }
  const authenticator = need(LINE.authenticator);
  const keySafe = need(LINE.keySafe);
  const job = found.has(LINE.job) ? need(LINE.job) : undefined;
  const dataCheck = formatVersion >= 2 ? need(LINE.dataCheck) : undefined;
  if (dataCheck !== undefined && parseDataCheck(dataCheck) === null) {
    throw meta(where, `${LINE.dataCheck} must be 64 lowercase hexadecimal digits, a '.', and 64 more (or 64 '-')`);
  }
  return {
    params: {
      formatVersion,
      cipher: cipher as CipherName,
      unitSize: unitSize as DataUnitSize,
      diskId,
      authenticator,
      keySafe,
      ...(dataCheck !== undefined ? { dataCheck } : {}),
      ...(layerId !== undefined ? { layerId } : {}),
      ...(parentLayerId !== undefined ? { parentLayerId } : {}),
    },
    job,
  };
}

function meta(where: string, why: string): DiskError {
  return new DiskError('ERR_ENCRYPTION_METADATA', `cannot read the encryption lines of ${where}: ${why}`);
}
