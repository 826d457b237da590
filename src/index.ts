// The package root: every public name of every layer.
export { VmsealError, type ArgumentErrorCode } from './errors.js';
export * from './xts/index.js';
export * from './vmdk/index.js';
export * from './keys/index.js';
export * from './kmip/index.js';
export * from './disk/index.js';
export * from './pipeline/index.js';
export * from './backup/index.js';
export * from './vm/index.js';
export * from './serve/index.js';
// Both the VMDK layer and the encrypted-disk layer define `openDisk`. The root's is the key-aware one
// (plain disks open plainly, encrypted ones decrypted with `keys`); the VMDK layer's stays available
// under its own name for raw ciphertext access.
export { openDisk, type OpenDiskOptions } from './disk/index.js';
export { openDisk as openPlainDisk, type OpenDiskOptions as PlainOpenDiskOptions } from './vmdk/index.js';
