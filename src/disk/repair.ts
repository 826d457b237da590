/**
 * Resealing the data check: recompute it from the data as it is and write it, with the keys. The
 * way out after a torn write of unit 0 left a descriptor whose slots match neither old nor new data
 * (or after a descriptor was rebuilt by hand); also turns a version-1 disk into a version-2 one.
 * It trusts the data: never run it on a descriptor that may belong to other data.
 */
import { computeAuthenticator, type UnlockOptions } from '../keys/index.js';
import { openDisk as openVmdk } from '../vmdk/index.js';
import { expected } from '../errors.js';
import { createDataCipher } from './cipher.js';
import { DataCheckKey, formatDataCheck } from './data-check.js';
import { DiskError } from './errors.js';
import { bindingOf, rebind, unlockDek } from './keying.js';
import { assertNoJournal, encryptionOf } from './open.js';
import { LINE, unsafeValueReason, type EncryptionParams } from './params.js';
import { backUnitZero, readUnitZero } from './unit-zero.js';

export interface ResealDataCheckOptions {
  /** Unlocks the disk's KeySafe (required: the check is keyed from the DEK). */
  keys: UnlockOptions;
}

export interface ResealDataCheckResult {
  path: string;
  diskId: string;
  /** The format version before (1: the disk had no data check and now has one). */
  previousFormatVersion: number;
  /** The descriptor's data check before, if any (committed.pending). */
  previous: string | undefined;
  /** The data check written. */
  dataCheck: string;
}

/**
 * Recompute the data check of an encrypted disk from its unit 0 and write it (committed, no
 * pending). The KeySafe is unlocked and the authenticator checked first; a sparse disk whose unit 0
 * is a hole gets a grain of encrypted zeros (it reads as zeros before and after).
 */
export async function resealDataCheck(path: string, options: ResealDataCheckOptions): Promise<ResealDataCheckResult> {
  if (typeof path !== 'string' || path.length === 0) throw new DiskError('ERR_INVALID_ARGUMENT', expected('a file path', 'path', path));
  const keys = options?.keys;
  if (keys === null || typeof keys !== 'object') {
    throw new DiskError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? }', 'keys', keys));
  }
  assertNoJournal(path);
  const inner = await openVmdk(path, { allowEncrypted: true });
  try {
    const enc = encryptionOf(inner);
    if (!enc) throw new DiskError('ERR_NOT_ENCRYPTED', `${path} is not encrypted: it has no data check to reseal`);
    if (enc.job !== undefined)
      throw new DiskError('ERR_INTERRUPTED_JOB', `${path} is in the middle of an interrupted ${enc.job} job; finish it first (vmseal resume)`);
    const params = enc.params;
    if (inner.capacity % params.unitSize !== 0) {
      throw new DiskError(
        'ERR_ENCRYPTION_METADATA',
        `the capacity of ${path} (${inner.capacity} bytes) is not a multiple of its ${params.unitSize}-byte data unit`,
      );
    }
    const dek = await unlockDek(params, inner.capacity, keys, path);
    const cipher = createDataCipher(params.cipher, dek, params.unitSize);
    const checkKey = new DataCheckKey(dek);
    try {
      await backUnitZero(inner, cipher);
      const unit0 = await readUnitZero(inner, cipher);
      if (!unit0) throw new DiskError('ERR_WRONG_DATA', `${path}: data unit 0 is not backed by data (a ZERO extent?), so no data check can be kept for it`);
      // A version-1 disk moves to version 2: the authenticator binds the version, so it is recomputed
      // (same disk id unless the new authenticator happens to contain unsafe text).
      const next: EncryptionParams = params.formatVersion >= 2 ? { ...params } : upgraded(dek, params, inner.capacity);
      next.dataCheck = formatDataCheck({ committed: checkKey.value(next.diskId, params.unitSize, unit0), pending: null });
      await inner.updateDescriptor((d) => {
        d.set(LINE.format, `vmseal/${next.formatVersion}`);
        d.set(LINE.dataCheck, next.dataCheck!, { after: LINE.format });
        d.set(LINE.diskId, next.diskId);
        d.set(LINE.authenticator, next.authenticator);
      });
      return { path, diskId: next.diskId, previousFormatVersion: params.formatVersion, previous: params.dataCheck, dataCheck: next.dataCheck };
    } finally {
      dek.fill(0);
      cipher.dispose();
      checkKey.dispose();
    }
  } finally {
    await inner.close();
  }
}

function upgraded(dek: Buffer, params: EncryptionParams, capacity: number): EncryptionParams {
  const same = { ...params, formatVersion: 2 };
  const authenticator = computeAuthenticator(dek, bindingOf(same, capacity));
  if (unsafeValueReason(authenticator) === null) return { ...same, authenticator };
  return { ...rebind(dek, same, capacity), dataCheck: undefined };
}
