/**
 * The exit codes of `vmseal`, documented in docs/cli.md. Scripts branch on them, so they are stable:
 * never renumber, only add.
 */
export const ExitCode = {
  /** Everything asked for was done. */
  OK: 0,
  /** The operation failed (I/O error, no space, output exists, a batch item failed, …). */
  FAILURE: 1,
  /** The command line was wrong: unknown command or option, bad value, missing argument. */
  USAGE: 2,
  /** No key opens the disk: wrong passphrase, wrong or destroyed key, disk locked. */
  KEY: 3,
  /** The key server (KMS) could not be reached or refused the client. */
  KMS_UNAVAILABLE: 4,
  /** An input is not a valid or supported disk image, or is encrypted where plain was expected (or the reverse). */
  FORMAT: 5,
  /** `verify` found data or metadata that does not match; a descriptor does not belong to its data (ERR_BINDING, ERR_WRONG_DATA). */
  MISMATCH: 6,
  /** Another vmseal process is working on the same disk (its lock file is held). */
  BUSY: 7,
  /** A bug in vmseal: an unexpected error. */
  INTERNAL: 70,
  /** Interrupted by Ctrl-C (SIGINT) or SIGTERM; everything half-done was removed. */
  INTERRUPTED: 130,
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];
