// Public surface of src/pipeline: streaming jobs over whole disks.
export { PipelineError, type PipelineErrorCode } from './errors.js';
export {
  encryptDisk,
  decryptDisk,
  decryptDiskReplacing,
  convertDisk,
  type EncryptDiskOptions,
  type DecryptDiskOptions,
  type ConvertDiskOptions,
} from './jobs.js';
export { convertNeedsKeys } from './ciphertext-copy.js';
export type { JobOptions, JobResult, EncryptSpec, OutputOptions, OutputSubformat, DiskFormat } from './options.js';
export type { Progress, Operation, Phase, ProgressListener } from './progress.js';
export {
  encryptInPlace,
  deepRekey,
  shallowRekey,
  resumeDisk,
  type EncryptInPlaceOptions,
  type DeepRekeyOptions,
  type ShallowRekeyOptions,
  type ResumeOptions,
} from './inplace.js';
export type { KeyRotation, KeptReason } from './retire.js';
export { inspectDisk, verifyDisk, type DiskInfo, type InspectOptions, type VerifyOptions, type VerifyResult } from './inspect.js';
export { commitSnapshot, type CommitSnapshotOptions, type CommitResult } from './commit.js';
