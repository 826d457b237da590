import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of the streaming engine. Errors of the layers below (ERR_VMDK_*, src/disk's
 * ERR_DISK_ENCRYPTED / ERR_NOT_ENCRYPTED / ERR_ENCRYPTION_METADATA / ERR_INTERRUPTED_JOB, the key
 * layer's ERR_WRONG_KEY / ERR_DISK_LOCKED / ERR_BINDING …) pass through unchanged.
 */
export type PipelineErrorCode =
  | 'ERR_OUTPUT_EXISTS' // the output exists and force was not given
  | 'ERR_SAME_FILE' // the output is the input (or one of its files)
  | 'ERR_NO_SPACE' // the destination file system cannot hold the estimated output
  | 'ERR_DISK_BUSY' // another process (vmseal, a VMware VM) holds the disk's lock, or a name its output needs
  | 'ERR_QEMU_LOCKED' // qemu (qemu-img, qemu-io, qemu-nbd, a running VM) holds the disk with conflicting permissions
  | 'ERR_ABORTED' // the AbortSignal fired; temporary files were removed
  | 'ERR_UNSUPPORTED_OUTPUT' // an encrypted output asked as raw or streamOptimized
  | 'ERR_JOURNAL' // an in-place journal is unreadable or belongs to another job or disk
  | 'ERR_JOURNAL_MISMATCH' // a re-run of an interrupted in-place job asks for other lockers (or cipher, unit size) than its journal
  | 'ERR_NOT_A_SNAPSHOT' // snapshot commit of a disk without a parent (a chain of one layer): nothing to commit into
  | 'ERR_SNAPSHOT_HAS_CHILDREN' // snapshot commit of a layer that has snapshots of its own (mode 0444): commit the newest first
  | 'ERR_SNAPSHOT_SIBLINGS' // snapshot commit into a parent that has other snapshots besides the one committed (they would become unreadable); a deep rekey of a chain with a branch
  | 'ERR_SNAPSHOT_CHAIN' // an in-place job (encryption, deep rekey --in-place) given a layer of a snapshot chain, or a chain a deep rekey cannot rebuild (multi-file layers, other folders)
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad option

/** The one error class of src/pipeline. */
export class PipelineError extends VmsealError {
  declare readonly code: PipelineErrorCode;

  constructor(code: PipelineErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/**
 * The error of a cancelled job. Its `name` is 'AbortError', as for every cancelled operation in Node
 * and the web platform (code that checks `err.name === 'AbortError'` works unchanged); its `code`
 * stays ERR_ABORTED, and it is still a PipelineError and a VmsealError.
 */
export function abortError(signal: AbortSignal | undefined, what: string): PipelineError {
  const reason = signal?.reason;
  const why = reason instanceof Error && reason.name !== 'AbortError' ? `: ${reason.message}` : '';
  const err = new PipelineError('ERR_ABORTED', `${what} was cancelled${why}`, { cause: reason });
  Object.defineProperty(err, 'name', { value: 'AbortError', enumerable: false, configurable: true, writable: true });
  return err;
}

export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw abortError(signal, what);
}
