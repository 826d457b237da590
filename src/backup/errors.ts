import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of ciphertext backups. Errors of the layers below (opening and locking a disk:
 * ERR_VMDK_*, ERR_ENCRYPTION_METADATA, ERR_DISK_BUSY, ERR_QEMU_LOCKED …) pass through unchanged.
 */
export type BackupErrorCode =
  | 'ERR_BACKUP_REPOSITORY' // not a backup repository (no or damaged format file, newer version), or `init` on a folder that is not empty
  | 'ERR_BACKUP_BUSY' // another process holds the repository lock in a conflicting mode (prune against create/restore/verify)
  | 'ERR_BACKUP_PLAIN' // a plain (unencrypted) disk given to `create` without allowPlain
  | 'ERR_BACKUP_UNSUPPORTED' // a disk the repository cannot hold yet: streamOptimized, a point of several layers, restore --over onto a snapshot chain
  | 'ERR_BACKUP_MANIFEST' // a point's manifest is damaged or unsafe (bad JSON or field, extent name with `/` or `..`, another repository's)
  | 'ERR_BACKUP_CHUNK' // a chunk a point names is missing, or its content does not hash to its name
  | 'ERR_BACKUP_NO_POINT' // no point has that id or name (or the repository has no point, for `latest`)
  | 'ERR_BACKUP_NOT_SAME_DISK' // restore --over: the disk is not the one the point was taken of (disk id, subformat, capacity, grain or extent size)
  | 'ERR_BACKUP_LAST_LOCKER' // rewrap --remove-locker: a point would be left with no locker
  | 'ERR_OUTPUT_EXISTS' // restore: a file of the output disk exists
  | 'ERR_WRONG_PARENT' // create: the layers of an encrypted chain do not belong together (disk id, cipher, unit size, layer ids)
  | 'ERR_INTERRUPTED_JOB' // create, restore --over: the disk is in the middle of an in-place job or a rollback
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad option

/** The one error class of src/backup. */
export class BackupError extends VmsealError {
  declare readonly code: BackupErrorCode;

  constructor(code: BackupErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
