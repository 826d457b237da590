// Public surface of the VM layer (src/vm): a VM folder as one unit.
// State files (.nvram, .vmsn, .vmem, UEFI variables at rest), the qemu VM folder manifest and the vTPM.
export { VmStateError, type VmStateErrorCode } from './state-file-errors.js';
export { encryptStateFile, decryptStateFile, rewrapStateFile, readStateFileHeader, isStateFile } from './state-file.js';
export type { EncryptStateFileOptions, DecryptStateFileOptions, RewrapStateFileOptions } from './state-file.js';
export { STATE_FILE_MAGIC, STATE_FILE_VERSION, STATE_CHUNK_SIZE, STATE_TAG_BYTES, type StateFileHeader } from './state-file-format.js';
export { readManifest, writeManifest, validateManifest, manifestPath, MANIFEST_NAME, MANIFEST_VERSION, type VmManifest } from './manifest.js';
export {
  startVmTpm,
  rewrapVmTpmKey,
  qemuTpmArgs,
  TPM_STATE_FILE,
  TPM_STATE_CIPHER,
  type StartVmTpmOptions,
  type RewrapVmTpmKeyOptions,
  type VmTpm,
} from './tpm.js';
