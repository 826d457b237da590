// Public surface of the VM layer (src/vm): a VM folder as one unit. Each part adds its own export lines.
// The layer's one error class (the .vmx, state files, the manifest, the vTPM):
export { VmError, type VmErrorCode } from './errors.js';
// State files (.nvram, .vmsn, .vmem, UEFI variables at rest), the qemu VM folder manifest and the vTPM.
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
// The .vmx (VMware's configuration encryption) and the hard disks it names:
export { VmxFile, VMX_LIMITS, type VmxLine, type VmxLineEnding } from './vmx-file.js';
export {
  encryptVmx,
  decryptVmx,
  isEncryptedVmx,
  vmxLockers,
  VMX_CLEAR_KEYS,
  VMX_LAYOUT_KEY,
  type EncryptVmxOptions,
  type DecryptVmxOptions,
  type DecryptVmxResult,
} from './vmx-crypt.js';
export { findVmx, encryptVmxFile, decryptVmxFile, type EncryptVmxFileResult, type DecryptVmxFileResult } from './vmx-io.js';
export { inspectVm, vmxDisks, diskState, type VmInfo, type VmDisk, type VmDiskState, type InspectVmOptions } from './config-disks.js';
// A VM folder's files (disks with their snapshot chains, state files), for the folder jobs and `vm rekey`:
export {
  listVmFolder,
  isQemuVmFolder,
  inspectQemuVm,
  type VmFolderFiles,
  type VmFolderDisk,
  type VmStateFileEntry,
  type VmStateFileKind,
  type ListVmFolderOptions,
} from './folder-files.js';
// A VM folder as one unit: vm encrypt / vm decrypt of every file in one journaled job, and the all-or-none rule.
export {
  encryptVmFolder,
  decryptVmFolder,
  type EncryptVmFolderOptions,
  type DecryptVmFolderOptions,
  type VmFolderJobOptions,
  type VmFolderResult,
  type VmFolderStepEvent,
} from './folder-crypt.js';
export { readVmJob, VM_JOB_NAME, type VmJob, type VmJobStep, type VmJobOperation, type VmJobStepKind } from './folder-job.js';
export { isMixed, refuseMixed } from './all-or-none.js';
// `vm rekey`: the whole VM onto a new VM KEK, in the folder's one job file:
export { rekeyVm, type RekeyVmOptions, type RekeyVmResult, type VmRekeyStep, type VmRekeyItemKind } from './rekey.js';
