import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of the VM layer (src/vm): the .vmx, the state-file container (.nvram, .vmsn, .vmem,
 * UEFI variables at rest), the qemu VM folder manifest (vmseal-vm.json) and the vTPM (swtpm). Errors
 * of the key layer pass through unchanged: a wrong passphrase or key, and an `encryption.data` that
 * does not verify, are ERR_WRONG_KEY (KeyError); ERR_DISK_LOCKED, ERR_KEYSAFE … likewise.
 */
export type VmErrorCode =
  // The .vmx (src/vm/vmx*.ts, config-disks.ts):
  | 'ERR_VMX_FORMAT' // not a .vmx vmseal can read: a line that is not `key = "value"`, a comment or blank; too large; encryption lines missing, repeated or malformed (the message names the line)
  | 'ERR_VMX_ENCRYPTED' // encryption asked of a .vmx that is already encrypted
  | 'ERR_VMX_NOT_ENCRYPTED' // decryption asked of a .vmx that is not encrypted
  | 'ERR_VMX_NOT_FOUND' // a folder holds no .vmx, or several (name one)
  | 'ERR_VMX_BUSY' // VMware's lock folder `<name>.vmx.lck` exists (the VM is running), or another vmseal process is rewriting the .vmx
  // State files, the manifest and the vTPM (src/vm/state-file*.ts, manifest.ts, tpm*.ts):
  | 'ERR_VM_STATE_FORMAT' // not a vmseal state file, or its header is damaged or from a newer vmseal
  | 'ERR_VM_STATE_AUTH' // a chunk of a state file does not authenticate: modified, truncated, reordered, or from another file
  | 'ERR_VM_STATE_CHANGED' // the plain file changed size while it was being encrypted (a running VM writes it)
  | 'ERR_VM_MANIFEST' // vmseal-vm.json is missing, not JSON, or does not follow the schema
  | 'ERR_VM_TPM' // swtpm or swtpm_setup is missing, failed or exited
  | 'ERR_VM_TPM_KEY' // the vTPM state does not open with the state key sealed in the manifest
  // A VM folder as one unit (src/vm/folder-*.ts):
  | 'ERR_VM_DISK' // a disk of the VM cannot be processed: missing, unreadable, a raw or streamOptimized disk to encrypt in place, a VMware-encrypted disk to decrypt
  | 'ERR_VM_SNAPSHOT' // a disk of the VM is a snapshot chain with a layer the chain job cannot rewrite under the same file names (chain-aside.ts)
  | 'ERR_VM_JOB' // the VM folder's job file is damaged, or an interrupted job of the other operation (or under another key provider) is pending
  | 'ERR_VM_RESUME_PASSPHRASE' // an interrupted vm encrypt was started with a recovery passphrase and this run gives none (or the reverse): vmseal stores no passphrase, it must be given again
  | 'ERR_VM_MIXED' // the VM is mixed (some disks encrypted, some not) and the command needs all or none (--allow-mixed overrides)
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad option or argument

/** Where a VmError points; a field left out (or undefined) is not set on the error. */
export interface VmErrorDetails {
  /** The file the error is about (a .vmx, state file, manifest …). */
  file?: string | undefined;
  /** The line (1-based) of a .vmx, for ERR_VMX_FORMAT. */
  line?: number | undefined;
  /** The chunk (0-based) of a state file that failed, for ERR_VM_STATE_AUTH. */
  chunk?: number | undefined;
  cause?: unknown;
}

/**
 * The one error class of src/vm. `file`, `line` and `chunk` exist on the error only when given, so
 * `'chunk' in err` says whether the error is about a chunk and `Object.keys(err)` lists only what it
 * carries. They are `declare`d: with target ES2022 a plain field declaration is emitted as a class
 * field, which would define all three (as undefined) on every error.
 */
export class VmError extends VmsealError {
  declare readonly code: VmErrorCode;
  declare readonly file?: string;
  declare readonly line?: number;
  declare readonly chunk?: number;

  constructor(code: VmErrorCode, message: string, details: VmErrorDetails = {}) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    if (details.file !== undefined) this.file = details.file;
    if (details.line !== undefined) this.line = details.line;
    if (details.chunk !== undefined) this.chunk = details.chunk;
  }
}
