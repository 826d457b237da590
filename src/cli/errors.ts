/**
 * The CLI's error type and the one place that turns any error into an exit code and a one-line
 * message of the shape
 *
 *     vmseal: <what failed>: <why>. <what to do>
 *
 * Expected errors (every VmsealError, Node's file-system errors) never print a stack trace; only an
 * unexpected error (a bug) does, and only with VMSEAL_DEBUG=1.
 */
import { VmsealError } from '../errors.js';
import type { DiskErrorCode } from '../disk/index.js';
import type { KeyErrorCode } from '../keys/index.js';
import type { KmipErrorCode } from '../kmip/index.js';
import type { PipelineErrorCode } from '../pipeline/index.js';
import type { VmdkErrorCode } from '../vmdk/index.js';
import type { XtsErrorCode } from '../xts/index.js';
import type { UtilErrorCode } from '../util/lock.js';
import type { ServeErrorCode } from '../serve/index.js';
import type { BackupErrorCode } from '../backup/index.js';
import type { VmErrorCode } from '../vm/index.js';
import { ExitCode, type ExitCodeValue } from './exit-codes.js';

/** Every stable error code of the layers below the CLI (CliError codes carry their own exit code). */
export type ErrorCode =
  | UtilErrorCode
  | XtsErrorCode
  | KmipErrorCode
  | KeyErrorCode
  | VmdkErrorCode
  | DiskErrorCode
  | PipelineErrorCode
  | BackupErrorCode
  | VmErrorCode
  | ServeErrorCode;

/** An error found by the CLI itself (bad option value, missing file, passphrase on argv, …). */
export class CliError extends VmsealError {
  readonly exitCode: ExitCodeValue;
  readonly hint: string | undefined;

  constructor(code: string, message: string, options: { exitCode?: ExitCodeValue; hint?: string; cause?: unknown } = {}) {
    super(code, message, options.cause === undefined ? undefined : { cause: options.cause });
    this.exitCode = options.exitCode ?? ExitCode.FAILURE;
    this.hint = options.hint;
  }
}

const USAGE_HINT = 'Run `vmseal --help` for usage';

/** A usage error: exit code 2. */
export function usageError(message: string, hint?: string): CliError {
  return new CliError('ERR_CLI_USAGE', message, { exitCode: ExitCode.USAGE, hint: hint ?? USAGE_HINT });
}

export interface Classified {
  exitCode: ExitCodeValue;
  /** What to do about it, one sentence without the final period; undefined if nothing useful. */
  hint: string | undefined;
  /** True for errors vmseal did not expect (bugs): they may print a stack trace under VMSEAL_DEBUG. */
  unexpected: boolean;
}

const KMS_HINT = 'Check --kms, the certificates (--kms-ca/--kms-cert/--kms-key) and that the key server is running';
const KEY_HINT = "Give the key provider that holds the disk's key (`vmseal info DISK` lists its lockers), or its recovery passphrase";
const FORMAT_HINT = 'Check that the input is the disk image you meant (`vmseal info` shows what vmseal sees)';
const KMIP_PORT_HINT = 'Check that --kms names a KMIP server (port 5696 by default)';
const PERMISSIONS_HINT = 'Check the file permissions';
const BACKUP_BUSY_HINT = 'Retry when the other vmseal process is done; a process that died holds no lock';
const BACKUP_WAIT_HINT = 'Retry when the other vmseal process is done, or give --wait SECONDS; a process that died holds no lock';
/** The two codes of an existing output (the pipeline's and the VMDK writer's) share their hints. */
const EXISTS_HINT = 'Choose another output name, or remove the existing file';

/**
 * Exit code and hint for each stable error code of the layers below (docs/errors.md lists them).
 * Typed against the union of every layer's codes: a new code does not compile until it has a row.
 */
export const BY_CODE: Readonly<Record<ErrorCode, { exitCode: ExitCodeValue; hint?: string }>> = {
  // interrupted
  ERR_ABORTED: { exitCode: ExitCode.INTERRUPTED },
  ERR_XTS_CANCELLED: { exitCode: ExitCode.INTERRUPTED },
  // installation: the message says how to build the native addon
  ERR_NATIVE_NOT_FOUND: { exitCode: ExitCode.INTERNAL },
  // another process has the disk or the keystore
  ERR_LOCK_BUSY: { exitCode: ExitCode.BUSY, hint: 'Retry when the other process is done; a process that died holds no lock' },
  ERR_QEMU_LOCKED: { exitCode: ExitCode.BUSY, hint: 'The image is open in qemu (qemu-img, qemu-nbd or a running VM): stop it first' },
  ERR_LOCK_IO: { exitCode: ExitCode.FAILURE },
  ERR_FS_EXTENTS_IO: { exitCode: ExitCode.FAILURE },
  ERR_LOCK_UNSUPPORTED: { exitCode: ExitCode.FAILURE },
  ERR_WRITEBACK_IO: { exitCode: ExitCode.FAILURE },
  ERR_NOWAIT_IO: { exitCode: ExitCode.FAILURE },
  ERR_COPY_RANGE_IO: { exitCode: ExitCode.FAILURE },
  ERR_TRANSFER_IO: { exitCode: ExitCode.FAILURE },
  ERR_BACKUP_CHUNK_IO: { exitCode: ExitCode.FAILURE },
  ERR_DISK_BUSY: { exitCode: ExitCode.BUSY, hint: 'Retry when the other process (vmseal, qemu or a VM) is done; a process that died holds no lock' },
  ERR_KEYSTORE_LOCKED: { exitCode: ExitCode.BUSY, hint: 'Another vmseal process is using the local keystore; retry when it is done' },
  // key server
  ERR_KMS_UNAVAILABLE: { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMS_HINT },
  ERR_KMIP_CONNECT: { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMS_HINT },
  ERR_KMIP_TLS: {
    exitCode: ExitCode.KMS_UNAVAILABLE,
    hint: "Check the certificates: --kms-ca must sign the server's certificate and the server must accept --kms-cert/--kms-key",
  },
  ERR_KMIP_TIMEOUT: { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMS_HINT },
  ERR_KMIP_CLOSED: { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMS_HINT },
  ERR_KMIP_TTLV: { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMIP_PORT_HINT },
  ERR_KMIP_PROTOCOL: { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMIP_PORT_HINT },
  ERR_KMIP_OPERATION_FAILED: {
    exitCode: ExitCode.FAILURE,
    hint: 'The key server refused the request; check its log and that this client certificate may use the key',
  },
  ERR_KMIP_KEY: { exitCode: ExitCode.FAILURE, hint: 'The key server returned a key vmseal cannot use (an AES-256 symmetric key is needed)' },
  // keys
  ERR_WRONG_KEY: { exitCode: ExitCode.KEY, hint: 'Check the passphrase or key provider; `vmseal info DISK` lists the lockers that can open the disk' },
  ERR_NO_KEY: { exitCode: ExitCode.KEY, hint: KEY_HINT },
  ERR_DISK_LOCKED: {
    exitCode: ExitCode.KEY,
    hint: "Make the disk's key provider reachable (see `vmseal info DISK`), or unlock it with its recovery passphrase (--passphrase-file F)",
  },
  ERR_UNSUPPORTED_LOCKER: { exitCode: ExitCode.KEY, hint: KEY_HINT },
  ERR_KEY_PROVIDER: { exitCode: ExitCode.FAILURE, hint: 'The key provider returned a key vmseal cannot use' },
  ERR_KEYSTORE_PASSPHRASE: { exitCode: ExitCode.KEY, hint: 'Check the keystore passphrase (--home-passphrase-file or VMSEAL_HOME_PASSPHRASE)' },
  ERR_KEYSTORE_MASTER_KEY: {
    exitCode: ExitCode.KEY,
    hint: "Check the keystore's master key file in VMSEAL_HOME (mode 0600), or restore the keystore from a backup",
  },
  ERR_KEYSTORE_PERMISSIONS: { exitCode: ExitCode.KEY, hint: 'Run the chmod command in the message: the keystore folder must be 0700 and its files 0600' },
  ERR_KEYSTORE_NO_SUCH_KEY: {
    exitCode: ExitCode.KEY,
    hint: 'Check the key id (`vmseal keys list`) and VMSEAL_HOME; restore the keystore from its backup if the key was lost',
  },
  ERR_KEY_RETIRED: {
    exitCode: ExitCode.KEY,
    hint: 'A deep rekey retired this key: open the current disk instead; to restore an old backup of it on purpose, add --allow-retired-key',
  },
  ERR_KEYSTORE_KEY_DESTROYED: {
    exitCode: ExitCode.KEY,
    hint: 'The key was destroyed; only a recovery passphrase locker (or a keystore backup) can open disks locked by it',
  },
  ERR_KEYSTORE_MISSING: { exitCode: ExitCode.FAILURE, hint: 'Run `vmseal keys init` (or point --home / VMSEAL_HOME at your keystore)' },
  ERR_KEYSTORE_CORRUPT: { exitCode: ExitCode.FORMAT, hint: 'Restore the keystore from a backup (`vmseal keys restore`)' },
  ERR_KEYSTORE_MODE: {
    exitCode: ExitCode.KEY,
    hint: 'A passphrase-protected keystore needs its passphrase (--home-passphrase-file F or VMSEAL_HOME_PASSPHRASE); a keystore with a master key file takes none',
  },
  ERR_KEYSTORE_CONFLICT: { exitCode: ExitCode.FAILURE, hint: 'The backup holds a different key under an id that exists here; restore into a fresh --home' },
  ERR_KEYSTORE_IO: { exitCode: ExitCode.FAILURE, hint: 'Check the permissions of VMSEAL_HOME' },
  // integrity
  ERR_BINDING: {
    exitCode: ExitCode.MISMATCH,
    hint: "The disk's encryption parameters were changed or swapped; restore the disk or its descriptor from a backup",
  },
  ERR_WRONG_DATA: {
    exitCode: ExitCode.MISMATCH,
    hint: "Put back the descriptor that belongs to this data (or restore the disk from a backup); only after a crash during a write, with a descriptor you know is this disk's, run `vmseal repair --reseal-data-check DISK`",
  },
  // formats
  ERR_DISK_ENCRYPTED: { exitCode: ExitCode.FORMAT, hint: 'The disk is already encrypted: use `vmseal decrypt`, `convert` or `rekey`' },
  ERR_NOT_ENCRYPTED: { exitCode: ExitCode.FORMAT, hint: 'The disk is not encrypted: use `vmseal encrypt` or `convert`' },
  ERR_ENCRYPTION_METADATA: {
    exitCode: ExitCode.FORMAT,
    hint: "The disk's encryption lines are damaged or from a newer vmseal; restore the descriptor from a backup",
  },
  ERR_KEYSAFE: { exitCode: ExitCode.FORMAT, hint: "The disk's KeySafe is damaged; restore the descriptor from a backup" },
  ERR_VMDK_FORMAT: { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT },
  ERR_VMDK_TRUNCATED: { exitCode: ExitCode.FORMAT, hint: 'The image is truncated (an interrupted copy?); copy it again' },
  ERR_VMDK_CORRUPT: { exitCode: ExitCode.FORMAT, hint: 'The image is damaged; run `qemu-img check` or restore it from a backup' },
  ERR_VMDK_LIMIT: { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT },
  ERR_VMDK_ENCODING: { exitCode: ExitCode.FORMAT, hint: 'Save the descriptor as UTF-8' },
  ERR_VMDK_UNSUPPORTED: { exitCode: ExitCode.FORMAT, hint: 'Convert the image with `qemu-img convert -O vmdk` or to raw first' },
  ERR_VMDK_EXTENT_FILE: { exitCode: ExitCode.FORMAT, hint: 'Keep the descriptor and its extent files together in one folder' },
  // the .vmx of a VM (src/vm)
  ERR_VMX_FORMAT: { exitCode: ExitCode.FORMAT, hint: 'Check that the file is the VM\'s .vmx (a VMware configuration file of `key = "value"` lines)' },
  ERR_VMX_ENCRYPTED: { exitCode: ExitCode.FORMAT, hint: 'The configuration is already encrypted: `vmseal vm info` shows its lockers' },
  ERR_VMX_NOT_ENCRYPTED: { exitCode: ExitCode.FORMAT, hint: 'The configuration is not encrypted: nothing to decrypt' },
  ERR_VMX_NOT_FOUND: { exitCode: ExitCode.FAILURE, hint: 'Give the VM folder that holds exactly one .vmx, or the .vmx file itself' },
  ERR_VMX_BUSY: { exitCode: ExitCode.BUSY, hint: 'Power off the virtual machine (or wait for the other vmseal process), then retry' },
  ERR_WRONG_PARENT: {
    exitCode: ExitCode.FORMAT,
    hint: 'A layer of this encrypted snapshot chain was replaced (an older snapshot, another disk): put back the layer the child was made on',
  },
  ERR_VMDK_CHAIN: { exitCode: ExitCode.FORMAT, hint: 'Keep every layer of a snapshot chain (the base disk and its -00000N children) together, unrenamed' },
  ERR_NOT_A_SNAPSHOT: { exitCode: ExitCode.USAGE, hint: 'Give the top of a snapshot chain (a -00000N child): `vmseal snapshot list DISK` shows the layers' },
  ERR_SNAPSHOT_CHAIN: {
    exitCode: ExitCode.FAILURE,
    hint: 'Commit the snapshots first (`vmseal snapshot commit TOP` until one layer is left); a deep rekey of a chain runs by copy, not in place (`vmseal rekey --deep DISK`: the chain is rebuilt aside); a chain of multi-file layers: convert its top to one disk',
  },
  ERR_SNAPSHOT_SIBLINGS: {
    exitCode: ExitCode.USAGE,
    hint: 'A layer has other snapshots (a branch): remove them first (or work on a copy of the chain)',
  },
  ERR_SNAPSHOT_HAS_CHILDREN: {
    exitCode: ExitCode.USAGE,
    hint: 'Commit the newest snapshot first (the top of the chain, `vmseal snapshot list`), then this one',
  },
  ERR_VMDK_PARENT_CHANGED: {
    exitCode: ExitCode.FORMAT,
    hint: 'A snapshot parent was written after its child was made: restore the parent as it was, or give up the child',
  },
  // usage
  ERR_INVALID_ARGUMENT: { exitCode: ExitCode.USAGE, hint: USAGE_HINT },
  ERR_SAME_FILE: { exitCode: ExitCode.USAGE, hint: 'Give an output path other than the input' },
  ERR_UNSUPPORTED_OUTPUT: {
    exitCode: ExitCode.USAGE,
    hint: 'Write an encrypted disk as monolithicSparse, monolithicFlat or a twoGbMaxExtent subformat (not raw or streamOptimized)',
  },
  // the NBD server
  ERR_SERVE_LISTEN: { exitCode: ExitCode.FAILURE, hint: 'Choose another socket path or port, or stop the server that uses it' },
  ERR_SERVE_EXPORT: { exitCode: ExitCode.USAGE, hint: 'Give each disk its own export name' },
  ERR_SERVE_INSECURE: {
    exitCode: ExitCode.USAGE,
    hint: 'Give TLS credentials with a CA for client certificates, or listen on a loopback address or a Unix socket',
  },
  ERR_SERVE_TLS: { exitCode: ExitCode.USAGE, hint: 'Give a PEM certificate and the PEM private key that matches it (unencrypted), and a PEM CA certificate' },
  ERR_SERVE_CONTROL: {
    exitCode: ExitCode.FAILURE,
    hint: 'Stop the other vmseal serve that uses this control socket, or choose another control socket (in a folder only you can reach)',
  },
  ERR_SERVE_NO_SERVER: { exitCode: ExitCode.FAILURE, hint: 'Is vmseal serve running? Check the path of its control socket' },
  ERR_SERVE_REQUEST: {
    exitCode: ExitCode.USAGE,
    hint: 'Send one JSON object per line with a command: status, attach, detach, unlock or snapshot (docs/serve.md)',
  },
  ERR_SERVE_NO_EXPORT: { exitCode: ExitCode.USAGE, hint: '`vmseal host status` lists the exports' },
  ERR_SERVE_NOT_LOCKED: { exitCode: ExitCode.FAILURE, hint: 'Nothing to do: the export is served (its status shows locked: false)' },
  ERR_SERVE_LOCKED: {
    exitCode: ExitCode.FAILURE,
    hint: 'Unlock the export first (`vmseal host unlock NAME`, or wait for its key provider): `vmseal host status` says why it is locked',
  },
  ERR_SERVE_READ_ONLY: {
    exitCode: ExitCode.USAGE,
    hint: 'Take the snapshot with `vmseal snapshot create` once no one serves the disk, or serve it writable: `vmseal serve DISK`, not `vmseal serve --read-only DISK`',
  },
  ERR_SERVE_CLOSED: { exitCode: ExitCode.FAILURE, hint: 'The server is stopping; start it again to serve the disk' },
  ERR_SERVE_INTERNAL: { exitCode: ExitCode.INTERNAL, hint: "This is a bug in vmseal: please report it with the server's log" },
  // backup repositories
  ERR_BACKUP_REPOSITORY: { exitCode: ExitCode.FORMAT, hint: 'Give the folder made by `vmseal backup init` (or make one in a new or empty folder)' },
  ERR_BACKUP_BUSY: { exitCode: ExitCode.BUSY, hint: BACKUP_BUSY_HINT },
  ERR_BACKUP_PLAIN: { exitCode: ExitCode.FORMAT, hint: 'Encrypt the disk first (`vmseal encrypt`), or use a general backup tool' },
  ERR_BACKUP_UNSUPPORTED: { exitCode: ExitCode.FORMAT, hint: 'Convert the disk to monolithicSparse or monolithicFlat first (`vmseal convert`)' },
  ERR_BACKUP_MANIFEST: {
    exitCode: ExitCode.MISMATCH,
    hint: "The point's manifest is damaged or was not written by vmseal: `vmseal backup verify REPO` lists the damage; restore the file from another copy of the repository",
  },
  ERR_BACKUP_CHUNK: {
    exitCode: ExitCode.MISMATCH,
    hint: 'The repository is damaged: `vmseal backup verify REPO` lists every bad chunk; restore them from another copy of the repository',
  },
  ERR_BACKUP_NO_POINT: { exitCode: ExitCode.USAGE, hint: '`vmseal backup list REPO` lists the points (id, name)' },
  ERR_BACKUP_NOT_SAME_DISK: {
    exitCode: ExitCode.USAGE,
    hint: 'A rollback in place works only on the disk the point was taken of: restore the point to a new file instead (`vmseal backup restore REPO POINT OUT`)',
  },
  ERR_BACKUP_LAST_LOCKER: {
    exitCode: ExitCode.USAGE,
    hint: 'Every point must keep a locker: add another one to the disk (`vmseal rekey --shallow`), back it up again, and prune the older points (`vmseal backup prune`)',
  },
  // VM state files, the VM folder manifest, the vTPM
  ERR_VM_STATE_FORMAT: {
    exitCode: ExitCode.FORMAT,
    hint: 'Check that the file is a state file vmseal encrypted (it starts with VMSEALST); restore it from a backup if damaged',
  },
  ERR_VM_STATE_AUTH: { exitCode: ExitCode.MISMATCH, hint: 'The encrypted state file was changed after vmseal wrote it; restore it from a backup' },
  ERR_VM_STATE_CHANGED: { exitCode: ExitCode.BUSY, hint: 'Stop the VM that writes the file, then run the command again' },
  ERR_VM_MANIFEST: { exitCode: ExitCode.FORMAT, hint: 'Fix vmseal-vm.json in the VM folder (its schema is in docs/vm.md)' },
  ERR_VM_TPM: {
    exitCode: ExitCode.FAILURE,
    hint: 'Check that swtpm and swtpm_setup (Debian: swtpm, swtpm-tools) are installed and the vTPM folder is writable',
  },
  ERR_VM_TPM_KEY: {
    exitCode: ExitCode.KEY,
    hint: 'The vTPM state does not open with the state key in vmseal-vm.json: put back the manifest that belongs to this state, or restore both from a backup',
  },
  // A VM folder as one unit
  ERR_VM_DISK: { exitCode: ExitCode.FAILURE, hint: '`vmseal vm info DIR` lists each disk of the VM and its state; the message says what to do with this one' },
  ERR_VM_SNAPSHOT: {
    exitCode: ExitCode.FORMAT,
    hint: 'Convert the layers of the chain to monolithicSparse (vmseal convert), or consolidate the snapshots first (VMware: Delete All Snapshots; qemu-img commit)',
  },
  ERR_VM_RESUME_PASSPHRASE: {
    exitCode: ExitCode.USAGE,
    hint: 'vmseal never stores a passphrase: run the same command as the first run, with --recovery-passphrase (and --passphrase-file F, or type it) exactly when the first run had it',
  },
  ERR_VM_JOB: { exitCode: ExitCode.FAILURE, hint: 'Finish the interrupted job with the command the message names (same key options), then retry' },
  ERR_VM_MIXED: {
    exitCode: ExitCode.FORMAT,
    hint: 'Encrypt the rest with `vmseal vm encrypt DIR` or decrypt all with `vmseal vm decrypt DIR`; to go on anyway, `vmseal vm rekey --allow-mixed …` (`vmseal vm tpm` and `vmseal serve` take it too)',
  },
  // plain failures with something to do
  ERR_OUTPUT_EXISTS: { exitCode: ExitCode.FAILURE, hint: EXISTS_HINT },
  ERR_VMDK_EXISTS: { exitCode: ExitCode.FAILURE, hint: EXISTS_HINT },
  ERR_NO_SPACE: { exitCode: ExitCode.FAILURE, hint: "Free space on the output's file system, or write the output elsewhere" },
  ERR_INTERRUPTED_JOB: { exitCode: ExitCode.FAILURE, hint: 'Run `vmseal resume DISK` to finish the interrupted job first' },
  ERR_JOURNAL_MISMATCH: {
    exitCode: ExitCode.USAGE,
    hint: 'Finish the interrupted job as it was started with `vmseal resume DISK`, then change its lockers with a shallow rekey (see `vmseal rekey --help`)',
  },
  ERR_JOURNAL: { exitCode: ExitCode.FAILURE, hint: 'The job journal beside the disk is damaged or belongs to another disk; keep a copy of both and report it' },
  ERR_READ_ONLY: { exitCode: ExitCode.FAILURE, hint: PERMISSIONS_HINT },
  ERR_VMDK_READ_ONLY: {
    exitCode: ExitCode.FAILURE,
    hint: 'Check the file permissions (a layer with snapshots is read-only: write the newest snapshot); a vmfsSparse or seSparse disk is read only: convert it first',
  },
  ERR_VMDK_IO: { exitCode: ExitCode.FAILURE, hint: 'Check the path and its permissions' },
  // Misuse of an API that the CLI's own checks rule out (it reaching a user is a bug in the CLI).
  // Exit codes as the by-family fallback below gave them before this table covered every code.
  ERR_INVALID_ARG_TYPE: { exitCode: ExitCode.USAGE, hint: USAGE_HINT },
  ERR_INVALID_ARG_VALUE: { exitCode: ExitCode.USAGE, hint: USAGE_HINT },
  ERR_OUT_OF_RANGE: { exitCode: ExitCode.FAILURE },
  ERR_XTS_KEY_LENGTH: { exitCode: ExitCode.FAILURE },
  ERR_XTS_WEAK_KEY: { exitCode: ExitCode.FAILURE },
  ERR_XTS_UNIT_SIZE: { exitCode: ExitCode.FAILURE },
  ERR_XTS_LENGTH: { exitCode: ExitCode.FAILURE },
  ERR_XTS_OUT_TOO_SMALL: { exitCode: ExitCode.FAILURE },
  ERR_XTS_OVERLAP: { exitCode: ExitCode.FAILURE },
  ERR_XTS_UNIT_NUMBER: { exitCode: ExitCode.FAILURE },
  ERR_XTS_TWEAK_LENGTH: { exitCode: ExitCode.FAILURE },
  ERR_XTS_DISPOSED: { exitCode: ExitCode.FAILURE },
  ERR_XTS_DETACHED: { exitCode: ExitCode.FAILURE },
  ERR_XTS_RESIZED: { exitCode: ExitCode.FAILURE },
  ERR_XTS_IMPL_UNAVAILABLE: { exitCode: ExitCode.FAILURE, hint: 'Unset VMSEAL_XTS_IMPL or name an implementation this CPU supports' },
  ERR_XTS_NATIVE: { exitCode: ExitCode.FAILURE },
  ERR_CLOSED: { exitCode: ExitCode.FAILURE },
  ERR_VMDK_RANGE: { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT },
  ERR_VMDK_DESCRIPTOR_FULL: { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT },
  ERR_VMDK_WRITE_ORDER: { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT },
  ERR_VMDK_CLOSED: { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT },
};

const VMX_KEY_HINT =
  "Give the VM's passphrase (--passphrase-file, --passphrase-env or --recovery-passphrase) or the key provider that holds its configuration key; `vmseal vm info VM` lists the lockers";
const NO_SERVER_HINT = 'Is vmseal serve running? Give --control with the path it was started with (or the same --home)';
const EXISTS_FORCE_HINT = 'Choose another output name, or add --force to replace it';
const EXISTS_BY_COMMAND: Record<string, string> = {
  encrypt: EXISTS_FORCE_HINT,
  decrypt: EXISTS_FORCE_HINT,
  convert: 'Choose another output name, add --force to replace it, or --skip-existing to keep it',
};

/**
 * Hints that depend on the command: a hint may only name options of the command that printed it
 * (`decrypt` has no --in-place, `rekey` no OUT), so the general hint above is replaced here.
 */
/** A live commit that failed after the export closed its chain (see src/serve/commit.ts). */
const LOST_DISK_HINT =
  'If the export has no usable disk now, detach it (vmseal host detach NAME), finish an interrupted commit with vmseal resume CHILD, and attach the disk again';

const BY_COMMAND: Record<string, Record<string, string>> = {
  ERR_SAME_FILE: { encrypt: 'Give an output path other than the input, or use --in-place' },
  ERR_NO_SPACE: {
    encrypt: "Free space on the output's file system, write the output elsewhere, or use --in-place",
    rekey: "Free space on the disk's file system, or use --in-place",
  },
  ERR_OUTPUT_EXISTS: EXISTS_BY_COMMAND,
  ERR_VMDK_EXISTS: EXISTS_BY_COMMAND,
  ERR_UNSUPPORTED_OUTPUT: {
    convert: 'Write an encrypted disk as monolithicSparse, monolithicFlat or a twoGbMaxExtent subformat, or add --decrypt for a plain copy',
  },
  ERR_SERVE_LISTEN: { serve: 'Choose another --socket path or --listen port, or stop the server that uses it' },
  ERR_SERVE_EXPORT: {
    serve: 'Give each disk its own export name with --export NAME=DISK',
    'host attach': 'Give the disk another export name with --name',
    'host commit': LOST_DISK_HINT,
    'host backup': LOST_DISK_HINT,
  },
  ERR_SERVE_CONTROL: {
    serve: 'Stop the other vmseal serve that uses this control socket, or give --control another path (in a folder only you can reach)',
  },
  ERR_SERVE_NO_SERVER: {
    'host status': NO_SERVER_HINT,
    'host attach': NO_SERVER_HINT,
    'host detach': NO_SERVER_HINT,
    'host unlock': NO_SERVER_HINT,
    'host snapshot': NO_SERVER_HINT,
    'host commit': NO_SERVER_HINT,
    'host backup': NO_SERVER_HINT,
  },
  ERR_SERVE_TLS: { serve: 'Check --tls-cert, --tls-key (the unencrypted PEM key of that certificate) and --tls-ca (PEM)' },
  ERR_SERVE_INSECURE: {
    serve:
      'Give --tls-cert, --tls-key and --tls-ca (client certificates), or listen on a loopback address or a Unix socket; --insecure-plaintext / --insecure-no-client-auth only if every host on that network may read the disks',
  },
  ERR_WRONG_KEY: { 'vm decrypt': VMX_KEY_HINT, 'vm info': VMX_KEY_HINT },
  ERR_NO_KEY: { 'vm decrypt': VMX_KEY_HINT, 'vm info': VMX_KEY_HINT },
  ERR_DISK_LOCKED: { 'vm decrypt': VMX_KEY_HINT, 'vm info': VMX_KEY_HINT },
  ERR_BACKUP_BUSY: {
    'backup create': BACKUP_WAIT_HINT,
    'backup verify': BACKUP_WAIT_HINT,
    'backup prune': BACKUP_WAIT_HINT,
    'backup restore': BACKUP_WAIT_HINT,
  },
  ERR_BACKUP_PLAIN: {
    'backup create': 'Encrypt the disk first (`vmseal encrypt`), use a general backup tool, or add --allow-plain to store a point marked plain',
  },
  ERR_DISK_ENCRYPTED: {
    encrypt: 'The disk is already encrypted: use `vmseal rekey` to change its keys, or `vmseal convert` to copy it',
    convert: 'The disk is already encrypted: drop --encrypt to copy it with its key, or use `vmseal rekey` to change its keys',
  },
};

/**
 * Codes whose messages from the layers below end with their own advice ("…; use rekey to change its
 * keys"): the CLI's hint replaces that advice, so that the line does not say it twice in two wordings.
 */
const LAYER_ADVICE = new Set(['ERR_DISK_ENCRYPTED', 'ERR_NOT_ENCRYPTED', 'ERR_OUTPUT_EXISTS', 'ERR_VMDK_EXISTS', 'ERR_WRONG_DATA']);

/**
 * Why an error happened, in the CLI's words: the layer's own advice (which names library options,
 * e.g. "force") is dropped when the CLI has a hint of its own for it.
 */
export function cliReason(err: unknown, command?: string): string {
  const why = sentence(reasonOf(err));
  const { hint } = classify(err, command);
  return hint !== undefined && err instanceof VmsealError && LAYER_ADVICE.has(err.code) ? why.replace(/;\s.*$/, '') : why;
}

/** Every error code of the layers below, in the order of the table above (for tests and docs). */
export const LAYER_ERROR_CODES = Object.keys(BY_CODE) as ErrorCode[];

/** The exit code the CLI gives a layer's error code. */
export function exitCodeOf(code: ErrorCode): ExitCodeValue {
  return BY_CODE[code].exitCode;
}

// Node's system-error codes that an ordinary user mistake or environment produces.
const SYSTEM_HINTS: Record<string, string> = {
  ENOENT: 'Check the path',
  EACCES: PERMISSIONS_HINT,
  EPERM: PERMISSIONS_HINT,
  EISDIR: 'Give a file, not a directory',
  ENOTDIR: 'Check the path',
  ENOSPC: "Free some space on the output's file system or write the output elsewhere",
  EROFS: 'Write the output to a writable file system',
  EFBIG: "A file would exceed the file-size limit (ulimit -f) or the file system's largest file: raise the limit or write the output elsewhere",
  EEXIST: EXISTS_FORCE_HINT,
  EMFILE: 'Raise the open-file limit (ulimit -n)',
  ECONNREFUSED: 'Check that the key server is running and --kms names it',
  ETIMEDOUT: 'Check the network path to the key server',
  EIO: 'The storage reported an I/O error; check the device',
};

function isAbortError(err: unknown): boolean {
  return err instanceof Error && (err.name === 'AbortError' || (err as { code?: unknown }).code === 'ABORT_ERR');
}

/** Map any thrown value to an exit code and a hint (for `command`, e.g. "decrypt", if given). */
export function classify(err: unknown, command?: string): Classified {
  if (err instanceof CliError) return { exitCode: err.exitCode, hint: err.hint, unexpected: false };
  if (isAbortError(err)) return { exitCode: ExitCode.INTERRUPTED, hint: undefined, unexpected: false };
  if (err instanceof VmsealError) {
    const known = Object.hasOwn(BY_CODE, err.code) ? BY_CODE[err.code as ErrorCode] : undefined;
    const forCommand = command !== undefined ? BY_COMMAND[err.code]?.[command] : undefined;
    if (known) return { exitCode: known.exitCode, hint: forCommand ?? known.hint, unexpected: false };
    // A code added later by a layer: classify by its family so that it still lands sensibly.
    if (/^ERR_KMIP_|^ERR_KMS_/.test(err.code)) return { exitCode: ExitCode.KMS_UNAVAILABLE, hint: KMS_HINT, unexpected: false };
    if (/^ERR_VMDK_/.test(err.code)) return { exitCode: ExitCode.FORMAT, hint: FORMAT_HINT, unexpected: false };
    if (/ARG/.test(err.code)) return { exitCode: ExitCode.USAGE, hint: USAGE_HINT, unexpected: false };
    return { exitCode: ExitCode.FAILURE, hint: undefined, unexpected: false };
  }
  const sysCode = err instanceof Error ? (err as NodeJS.ErrnoException).code : undefined;
  if (typeof sysCode === 'string' && sysCode in SYSTEM_HINTS) {
    const exitCode = /^(ECONNREFUSED|ETIMEDOUT)$/.test(sysCode) ? ExitCode.KMS_UNAVAILABLE : ExitCode.FAILURE;
    return { exitCode, hint: SYSTEM_HINTS[sysCode], unexpected: false };
  }
  return { exitCode: ExitCode.INTERNAL, hint: 'This is a bug in vmseal: please report it (VMSEAL_DEBUG=1 prints the stack trace)', unexpected: true };
}

/** One sentence: no trailing period, newlines folded (a message must stay on one line). */
function sentence(text: string): string {
  return text
    .replace(/\s*[:;,]?\s*[\r\n]+\s*/g, '; ')
    .trim()
    .replace(/[.\s]+$/, '');
}

/** Why an error happened, as a clause (its message, without Node's "ENOENT: " prefix noise). */
export function reasonOf(err: unknown): string {
  if (err instanceof Error) {
    const sys = err as NodeJS.ErrnoException;
    if (typeof sys.code === 'string' && typeof sys.syscall === 'string') {
      // "ENOENT: no such file or directory, open '/x'" → "no such file or directory: /x"
      const m = /^[A-Z0-9_]+: (.*?), \w+(?: '(.*)')?$/.exec(sys.message);
      if (m) return m[2] ? `${m[1]}: ${m[2]}` : (m[1] ?? sys.message);
    }
    return sentence(err.message || err.name);
  }
  return sentence(String(err));
}

/**
 * The one-line message for an error: "vmseal: <what failed>: <why>. <what to do>."
 * `what` names the operation and its operand (e.g. "cannot encrypt disk.img").
 */
export function formatError(what: string, err: unknown, command?: string): string {
  const { hint } = classify(err, command);
  const why = cliReason(err, command);
  const tail = hint ? ` ${sentence(hint)}.` : '';
  return `vmseal: ${sentence(what)}: ${why}.${tail}`;
}
