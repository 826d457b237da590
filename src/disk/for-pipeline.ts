/**
 * The disk layer's one door for src/pipeline. The streaming jobs need more of this layer than the
 * public API gives (the data cipher without a disk around it, making and unlocking encryption
 * parameters, the encryption lines and the policy table), but not its file layout: they import from
 * here only, and test/layers.test.ts fails if they reach into another module of src/disk. What is
 * exported here can change without a public API change; what is in ./index.ts cannot.
 */
export { createDataCipher, type DataCipher } from './cipher.js';
export { dataCheckOf } from './data-check.js';
export { EncryptedDisk } from './encrypted-disk.js';
export { DiskError } from './errors.js';
export { jobLineError } from './interrupted-job.js';
export { generateDek, makeEncryptionParams, reuseCreatedKeys, unlockDek, type KeyCache, type LockerSpec, type UnlockOptions } from './keying.js';
export { JOURNAL_SUFFIX, assertNoJournal, checkLockers, encryptionOf, openDisk, openWithDek, readEncryptionParams, unlockInner } from './open.js';
// The deep rekey of a snapshot chain rebuilds its layers with the disk layer's own snapshot rule.
export { createEncryptedSnapshot } from './snapshot.js';
export {
  DEFAULT_CIPHER,
  DEFAULT_UNIT_SIZE,
  LINE,
  MAX_UNIT_SIZE,
  MAX_VALUE_LENGTH,
  UNENCRYPTABLE_SUBFORMATS,
  checkEncryptionChoice,
  encryptedSubformatFor,
  encryptionLines,
  unsafeValueReason,
  type CipherName,
  type DataUnitSize,
  type EncryptionParams,
} from './params.js';
export { standaloneLayerParams } from './layers.js';
export { assertDataCheck, backUnitZero, checkDataCheck, unitZeroBacked } from './unit-zero.js';
