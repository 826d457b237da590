import { VmsealError } from '../errors.js';

/**
 * Stable codes of the .vmx part of the VM layer (src/vm/vmx*.ts, config*.ts). A wrong passphrase or
 * key, and an `encryption.data` that does not verify, are the key layer's ERR_WRONG_KEY (KeyError).
 *
 * - ERR_INVALID_ARGUMENT    a caller passed a bad option or argument
 * - ERR_VMX_FORMAT          the .vmx is not a VMware configuration file vmseal can read: a line that is
 *                           not `key = "value"`, a comment or blank; too large; encryption lines
 *                           missing, repeated or malformed (the message names the line)
 * - ERR_VMX_ENCRYPTED       encryption asked of a .vmx that is already encrypted
 * - ERR_VMX_NOT_ENCRYPTED   decryption asked of a .vmx that is not encrypted
 * - ERR_VMX_NOT_FOUND       a folder holds no .vmx, or several (name one)
 * - ERR_VMX_BUSY            VMware's lock folder `<name>.vmx.lck` exists (the VM is running), or another
 *                           vmseal process is rewriting the .vmx
 */
export type VmxErrorCode = 'ERR_INVALID_ARGUMENT' | 'ERR_VMX_FORMAT' | 'ERR_VMX_ENCRYPTED' | 'ERR_VMX_NOT_ENCRYPTED' | 'ERR_VMX_NOT_FOUND' | 'ERR_VMX_BUSY';

/** The error class of vmseal's .vmx code; `file` names the .vmx when there is one, `line` (1-based) the line. */
export class VmxError extends VmsealError {
  declare readonly code: VmxErrorCode;
  readonly file?: string;
  readonly line?: number;

  constructor(code: VmxErrorCode, message: string, details: { file?: string; line?: number; cause?: unknown } = {}) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    if (details.file !== undefined) this.file = details.file;
    if (details.line !== undefined) this.line = details.line;
  }
}
