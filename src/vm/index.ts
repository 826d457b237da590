// Public surface of src/vm: VM folders. Each part adds its own export lines.
// The .vmx (VMware's configuration encryption) and the hard disks it names:
export { VmxError, type VmxErrorCode } from './vmx-errors.js';
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
