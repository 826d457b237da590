// Public surface of src/disk: encrypted disks (random access) and the encryption lines of the format.
export { DiskError, type DiskErrorCode } from './errors.js';
export { EncryptedDisk } from './encrypted-disk.js';
export { openDisk, createEncryptedDisk, readEncryptionParams, assertNoJournal, type OpenDiskOptions, type CreateEncryptedDiskOptions } from './open.js';
export { resealDataCheck, type ResealDataCheckOptions, type ResealDataCheckResult } from './repair.js';
export { FORMAT_VERSION, type CipherName, type DataUnitSize, type EncryptionParams } from './params.js';
export { createEncryptedSnapshot, revertEncryptedSnapshot, type EncryptedSnapshotOptions } from './snapshot.js';
