// Public surface of src/backup: ciphertext backups of disks in a content-addressed repository.
export { BackupError, type BackupErrorCode } from './errors.js';
export { initRepository, CHUNK_SIZE, type RepositoryInfo } from './repository.js';
export { type PointManifest, type PointLayer, type ChunkEntry, type BackupSubformat, BACKUP_SUBFORMATS } from './manifest.js';
export { createBackup, type CreateBackupOptions, type CreateBackupResult } from './create.js';
export { trackChanges } from './track-changes.js';
export { restoreBackup, type RestoreBackupOptions, type RestoreBackupResult } from './restore.js';
export type { RestoreKeys } from './restore-keys.js';
export { restoreBackupOver, resumeBackupRestore, type RestoreOverOptions, type RestoreOverResult } from './restore-over.js';
export {
  listBackups,
  verifyBackup,
  pruneBackup,
  type PointSummary,
  type VerifyBackupResult,
  type VerifyProblem,
  type PruneBackupOptions,
  type PruneBackupResult,
} from './maintain.js';
export { rewrapBackup, type RewrapBackupOptions, type RewrapBackupResult } from './rewrap.js';
export type { PointChain, ChainLayerRecord } from './chain-point.js';
