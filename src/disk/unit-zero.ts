/**
 * Data unit 0 and the data check: reading its plaintext from the stored (ciphertext) disk, checking
 * it against the descriptor on open, and making sure a sparse disk backs it with data.
 */
import type { VirtualDisk } from '../vmdk/index.js';
import { createDataCipher, type DataCipher } from './cipher.js';
import { DataCheckKey, parseDataCheck } from './data-check.js';
import type { DataCheckState } from './encrypted-disk.js';
import { DiskError } from './errors.js';
import type { EncryptionParams } from './params.js';

/** True when the stored disk backs all of [0, length) with data (not a hole, a zeroed grain or a ZERO extent). */
export async function unitZeroBacked(inner: VirtualDisk, length: number): Promise<boolean> {
  let covered = 0;
  for await (const r of inner.allocatedRanges(0, length)) {
    if (r.offset > covered) return false;
    covered = Math.max(covered, r.offset + r.length);
  }
  return covered >= length;
}

/** The plaintext of unit 0, or null when the stored disk does not back it with data. */
export async function readUnitZero(inner: VirtualDisk, cipher: DataCipher): Promise<Buffer | null> {
  const u = cipher.unitSize;
  if (!(await unitZeroBacked(inner, u))) return null;
  const buf = Buffer.alloc(u);
  await inner.readInto(0, buf);
  await cipher.decrypt(buf, 0);
  return buf;
}

/**
 * Give unit 0 of a sparse encrypted disk a grain if it has none: encrypted zeros over the whole
 * grain, so that it reads as before (zeros) but is ciphertext that only this DEK decrypts to zeros.
 * A hole would read as zeros under any key and prove nothing. Flat disks back every byte already.
 */
export async function backUnitZero(inner: VirtualDisk, cipher: DataCipher): Promise<void> {
  const g = inner.grainSize;
  if (g === undefined || (await unitZeroBacked(inner, cipher.unitSize))) return;
  const zeros = Buffer.alloc(Math.min(g, inner.capacity));
  await cipher.encrypt(zeros, 0);
  await inner.write(0, zeros);
  await inner.flush();
}

/**
 * Check the data check of a version-2 disk against unit 0 — after the authenticator, before any
 * data is served. Returns the state the EncryptedDisk keeps for its unit-0 writes; ERR_WRONG_DATA
 * when unit 0 is unbacked or matches neither slot. The caller wipes `dek`.
 */
export async function checkDataCheck(inner: VirtualDisk, params: EncryptionParams, dek: Uint8Array, cipher: DataCipher): Promise<DataCheckState> {
  const slots = parseDataCheck(params.dataCheck ?? '');
  if (!slots) throw new DiskError('ERR_ENCRYPTION_METADATA', `${inner.path} has format version ${params.formatVersion} but no valid data check line`);
  const key = new DataCheckKey(dek);
  try {
    const unit0 = await readUnitZero(inner, cipher);
    if (!unit0) {
      throw wrongData(
        inner.path,
        'its data unit 0 is not backed by data (a hole reads as zeros under any key, so it cannot show that this descriptor belongs to this data)',
      );
    }
    const value = key.value(params.diskId, cipher.unitSize, unit0);
    if (value === slots.committed) return { key, current: value, commitPending: slots.pending !== null };
    if (value === slots.pending) return { key, current: value, commitPending: true }; // a unit-0 write finished, its commit did not
    throw wrongData(inner.path, 'its data check (encryption.dataCheck) does not match data unit 0 decrypted with its key');
  } catch (err) {
    key.dispose();
    throw err;
  }
}

/** Check the data check of a version-2 disk with its DEK, without opening it for data (`vmseal info`). The caller wipes `dek`. */
export async function assertDataCheck(inner: VirtualDisk, params: EncryptionParams, dek: Uint8Array): Promise<void> {
  if (params.formatVersion < 2) return;
  const cipher = createDataCipher(params.cipher, dek, params.unitSize);
  try {
    (await checkDataCheck(inner, params, dek, cipher)).key.dispose();
  } finally {
    cipher.dispose();
  }
}

function wrongData(path: string, why: string): DiskError {
  return new DiskError(
    'ERR_WRONG_DATA',
    `${path} does not belong to the data it sits on: ${why}, so its descriptor was rolled back (an old copy after a deep rekey), taken from another disk, ` +
      'or a write of unit 0 was torn; put back the descriptor that belongs to this data, or only if you are sure this one is right, reseal the check with the keys (resealDataCheck)',
  );
}
