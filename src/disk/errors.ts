import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of the encrypted-disk layer. Errors of the layers below (ERR_VMDK_*, and the key
 * layer's ERR_WRONG_KEY / ERR_DISK_LOCKED / ERR_BINDING / ERR_KEYSAFE / ERR_KMS_UNAVAILABLE) pass
 * through unchanged.
 */
export type DiskErrorCode =
  | 'ERR_DISK_ENCRYPTED' // an encrypted disk used as plain (no keys given), or encrypting an encrypted disk
  | 'ERR_NOT_ENCRYPTED' // keys given for, or decrypt/rekey asked of, a plain disk
  | 'ERR_ENCRYPTION_METADATA' // encryption lines missing, malformed, of an unknown version, or unsafe
  | 'ERR_INTERRUPTED_JOB' // an in-place job on this disk did not finish: resume it first
  | 'ERR_WRONG_DATA' // the data check does not match unit 0: the descriptor does not belong to this data (rolled back, copied, torn write)
  | 'ERR_READ_ONLY' // a write to a disk opened read-only
  | 'ERR_UNSUPPORTED_OUTPUT' // an encrypted disk asked in a subformat that cannot carry it (raw, streamOptimized)
  | 'ERR_CLOSED' // the disk was closed
  | 'ERR_WRONG_PARENT' // a layer of an encrypted snapshot chain is not the one its child was made on, or not of the same disk and key
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad argument to an API call

/** The one error class of src/disk. */
export class DiskError extends VmsealError {
  declare readonly code: DiskErrorCode;

  constructor(code: DiskErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
