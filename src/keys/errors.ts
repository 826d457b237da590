import { VmsealError } from '../errors.js';

/**
 * Stable codes of the key layer (src/keys). Callers branch on `code`, never on the message.
 *
 * - ERR_INVALID_ARGUMENT    a caller passed a bad option or argument
 * - ERR_KEYSAFE             a KeySafe string (or a crypto dict inside it) is malformed; see `reason`, `position`
 * - ERR_WRONG_KEY           a locker's MAC did not verify: wrong passphrase, wrong KEK, or modified locked data
 * - ERR_NO_KEY              nothing that could open any locker was given (no passphrase, no matching provider/cache)
 * - ERR_DISK_LOCKED         the KEK of a provider locker could not be fetched (provider down, key gone) and no
 *                           other locker opened; `providerId` and `keyId` name the key that is needed
 * - ERR_UNSUPPORTED_LOCKER  an operation needs a locker type vmseal cannot open (ldap, script, role, …)
 * - ERR_BINDING             the authenticator does not match the DEK and the disk's encryption parameters
 * - ERR_KEY_PROVIDER        a key provider returned something that is not a 32-byte KEK
 * - ERR_KEYSTORE_MISSING    the local keystore does not exist (run init / create a key first)
 * - ERR_KEYSTORE_CORRUPT    the local keystore (or a backup) is not a well-formed vmseal keystore file
 * - ERR_KEYSTORE_MASTER_KEY the master key file is missing, malformed, unsafe (mode) or does not open the keystore
 * - ERR_KEYSTORE_PERMISSIONS keystore.json or the keystore folder is accessible to group or others; the
 *                           message gives the chmod command that fixes it
 * - ERR_KEYSTORE_PASSPHRASE a keystore or backup passphrase is missing or wrong
 * - ERR_KEYSTORE_MODE       keystore protected by a key file but a passphrase was given, or the other way round
 * - ERR_KEYSTORE_NO_SUCH_KEY the keystore holds no key with that id
 * - ERR_KEYSTORE_KEY_DESTROYED the key was destroyed
 * - ERR_KEY_RETIRED         the key was retired (a deep rekey replaced it): the disk or descriptor is an
 *                           old copy; opened only when retired keys are allowed (restoring a backup)
 * - ERR_KEYSTORE_CONFLICT   a restore would replace a key with different key material under the same id
 * - ERR_KEYSTORE_LOCKED     another process held the keystore lock for longer than the lock timeout
 * - ERR_KEYSTORE_IO         the operating system refused a file operation on the keystore
 */
export type KeyErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_KEYSAFE'
  | 'ERR_WRONG_KEY'
  | 'ERR_NO_KEY'
  | 'ERR_DISK_LOCKED'
  | 'ERR_UNSUPPORTED_LOCKER'
  | 'ERR_BINDING'
  | 'ERR_KEY_PROVIDER'
  | 'ERR_KEYSTORE_MISSING'
  | 'ERR_KEYSTORE_CORRUPT'
  | 'ERR_KEYSTORE_MASTER_KEY'
  | 'ERR_KEYSTORE_PERMISSIONS'
  | 'ERR_KEYSTORE_PASSPHRASE'
  | 'ERR_KEYSTORE_MODE'
  | 'ERR_KEYSTORE_NO_SUCH_KEY'
  | 'ERR_KEYSTORE_KEY_DESTROYED'
  | 'ERR_KEY_RETIRED'
  | 'ERR_KEYSTORE_CONFLICT'
  | 'ERR_KEYSTORE_LOCKED'
  | 'ERR_KEYSTORE_IO';

/** One locker that was tried during an unlock and why it did not open (no secrets). */
export interface UnlockAttempt {
  /** Index of the pair in the KeySafe's list (0 for a KeySafe that is a single pair). */
  readonly index: number;
  readonly kind: 'provider' | 'passphrase' | 'unsupported';
  readonly providerId?: string;
  readonly keyId?: string;
  /** The error code that stopped this locker (ERR_WRONG_KEY, ERR_DISK_LOCKED, ERR_NO_KEY, …). */
  readonly code: string;
  readonly message: string;
}

export interface KeyErrorDetails {
  providerId?: string;
  keyId?: string;
  file?: string;
  attempts?: UnlockAttempt[];
  cause?: unknown;
}

/** The error class of the key layer; `code` says what went wrong. */
export class KeyError extends VmsealError {
  declare readonly code: KeyErrorCode;
  /** For ERR_DISK_LOCKED (and provider errors): the provider and key that were needed. */
  readonly providerId?: string;
  readonly keyId?: string;
  /** For keystore errors: the file involved. */
  readonly file?: string;
  /** For unlock failures: every locker tried and why it did not open. */
  readonly attempts?: UnlockAttempt[];

  constructor(code: KeyErrorCode, message: string, details: KeyErrorDetails = {}) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    if (details.providerId !== undefined) this.providerId = details.providerId;
    if (details.keyId !== undefined) this.keyId = details.keyId;
    if (details.file !== undefined) this.file = details.file;
    if (details.attempts !== undefined) this.attempts = details.attempts;
  }
}

/**
 * Why a KeySafe string was refused (the `reason` of a KeySafeError):
 * too-long, too-deep, too-many-items, prefix, type, syntax, escape, field, null-field, empty-field,
 * utf8, base64, length, mac, locker, dict, kdf, cipher.
 */
export type KeySafeReason =
  | 'too-long'
  | 'too-deep'
  | 'too-many-items'
  | 'prefix'
  | 'type'
  | 'syntax'
  | 'escape'
  | 'field'
  | 'null-field'
  | 'empty-field'
  | 'utf8'
  | 'base64'
  | 'length'
  | 'mac'
  | 'locker'
  | 'dict'
  | 'kdf'
  | 'cipher';

/** A malformed KeySafe string or crypto dict: code ERR_KEYSAFE, with a `reason` and the character `position`. */
export class KeySafeError extends KeyError {
  declare readonly code: 'ERR_KEYSAFE';
  readonly reason: KeySafeReason;
  /** 0-based character offset in the KeySafe text (or in the dict, for dict errors); -1 when not applicable. */
  readonly position: number;

  constructor(reason: KeySafeReason, position: number, message: string) {
    super('ERR_KEYSAFE', position >= 0 ? `Invalid KeySafe at offset ${position}: ${message}` : `Invalid KeySafe: ${message}`);
    this.reason = reason;
    this.position = position;
  }
}

export function invalidArgument(message: string): KeyError {
  return new KeyError('ERR_INVALID_ARGUMENT', message);
}
