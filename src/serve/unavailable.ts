/**
 * The one rule for "the key is unavailable" — what makes the host serve a disk *locked* (and retry)
 * instead of refusing it: the key layer could not fetch a provider KEK for a reason that may heal by
 * itself (the KMS is down or unreachable, the keystore is busy). Everything else stays a hard error of
 * serve() and attach: a wrong passphrase or KEK (ERR_WRONG_KEY), a retired key, a key the KMS does not
 * have or will not give (ERR_KMIP_OPERATION_FAILED), refused credentials or certificates (ERR_KMIP_TLS:
 * the KMIP client reports it only when every node refused the TLS session, a configuration error), no
 * provider configured for the disk, a corrupt disk.
 */
import { KeyError, type UnlockAttempt } from '../keys/index.js';

/**
 * Codes of a provider's getKey failure (an UnlockAttempt's `code`) that mean "try again later":
 * - ERR_KMS_UNAVAILABLE: no node of the KMIP cluster answered (connection refused or reset, timeout,
 *   TLS session dropped, garbage on the wire — each node's reason is in the message);
 * - ERR_KMIP_CONNECT, ERR_KMIP_TIMEOUT: the same for a provider that reports one node's failure;
 * - ERR_KEYSTORE_LOCKED: the local keystore was held by another process past the lock timeout.
 */
export const UNAVAILABLE_CODES: ReadonlySet<string> = new Set(['ERR_KMS_UNAVAILABLE', 'ERR_KMIP_CONNECT', 'ERR_KMIP_TIMEOUT', 'ERR_KEYSTORE_LOCKED']);

/** The key a locked disk waits for, and why it could not be fetched (no key material). */
export interface UnavailableKey {
  providerId: string;
  keyId: string;
  cause: string;
}

/**
 * The first unavailable key of an unlock failure, or undefined when the failure is a hard one. Only
 * ERR_DISK_LOCKED qualifies: the key layer reports ERR_WRONG_KEY or ERR_KEY_RETIRED instead as soon
 * as any locker gave that answer, so a disk with one wrong and one unreachable locker is refused.
 */
export function unavailableKey(err: unknown): UnavailableKey | undefined {
  if (!(err instanceof KeyError) || err.code !== 'ERR_DISK_LOCKED' || !err.attempts) return undefined;
  const a: UnlockAttempt | undefined = err.attempts.find(
    (t) => t.kind === 'provider' && t.providerId !== undefined && t.keyId !== undefined && UNAVAILABLE_CODES.has(t.code),
  );
  if (!a) return undefined;
  return { providerId: a.providerId!, keyId: a.keyId!, cause: a.message };
}

/** "key K of provider P unavailable: CAUSE", the locked reason of ExportInfo and of the NBD error. */
export function describeUnavailable(u: UnavailableKey): string {
  return `key ${u.keyId} of provider ${u.providerId} unavailable: ${u.cause}`;
}
