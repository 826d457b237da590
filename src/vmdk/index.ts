// Public surface of src/vmdk: VMDK and raw disks behind one VirtualDisk API.
export { VmdkFormatError, JOB_LINE, type VmdkErrorCode, type VmdkErrorLocation } from './errors.js';
export { Descriptor, MAX_DESCRIPTOR_BYTES, type ExtentLine, type ExtentAccess, type DescriptorSetOptions } from './descriptor.js';
export { type VirtualDisk, type AllocatedRange, MAX_READ_BYTES } from './disk.js';
export { openDisk, SUPPORTED_SUBFORMATS, MAX_EXTENTS, type OpenDiskOptions } from './open.js';
export { createDisk, plannedDiskFiles, CREATE_SUBFORMATS, ADAPTER_TYPES, type CreateDiskOptions, type CreateSubformat } from './create.js';
export { sparseFileFits, checkSparseFileFits } from './sparse-fit.js';
export { ChainDisk, ownRanges } from './chain.js';
export { MAX_CHAIN_DEPTH } from './chain-open.js';
export { createSnapshot, revertSnapshot, nextSnapshotName, type CreateSnapshotOptions } from './snapshot.js';
