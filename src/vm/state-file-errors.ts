import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of a VM folder's state: the state-file container (.nvram, .vmsn, .vmem, UEFI
 * variables at rest), the qemu VM folder manifest (vmseal-vm.json) and the vTPM (swtpm). Errors of
 * the key layer (ERR_WRONG_KEY, ERR_DISK_LOCKED, ERR_KEYSAFE …) pass through unchanged.
 */
export type VmStateErrorCode =
  | 'ERR_VM_STATE_FORMAT' // not a vmseal state file, or its header is damaged or from a newer vmseal
  | 'ERR_VM_STATE_AUTH' // a chunk of a state file does not authenticate: modified, truncated, reordered, or from another file
  | 'ERR_VM_STATE_CHANGED' // the plain file changed size while it was being encrypted (a running VM writes it)
  | 'ERR_VM_MANIFEST' // vmseal-vm.json is missing, not JSON, or does not follow the schema
  | 'ERR_VM_TPM' // swtpm or swtpm_setup is missing, failed or exited
  | 'ERR_VM_TPM_KEY' // the vTPM state does not open with the state key sealed in the manifest
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad option

/** The error class of the VM state files, the manifest and the vTPM. */
export class VmStateError extends VmsealError {
  declare readonly code: VmStateErrorCode;
  /** The file the error is about, when there is one. */
  readonly file: string | undefined;
  /** The chunk (0-based) that failed, for ERR_VM_STATE_AUTH. */
  readonly chunk: number | undefined;

  constructor(code: VmStateErrorCode, message: string, options: { cause?: unknown; file?: string; chunk?: number } = {}) {
    super(code, message, options.cause === undefined ? undefined : { cause: options.cause });
    this.file = options.file;
    this.chunk = options.chunk;
  }
}
