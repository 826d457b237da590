import { VmsealError } from '../errors.js';

/**
 * Stable codes of the KMIP layer.
 *
 * - ERR_INVALID_ARGUMENT       a caller passed a bad option or argument
 * - ERR_KMIP_TTLV              bytes that are not well-formed TTLV (or exceed the decoder's limits)
 * - ERR_KMIP_PROTOCOL          well-formed TTLV that is not the KMIP message that was expected
 * - ERR_KMIP_OPERATION_FAILED  the server answered with a failure status (see resultStatus/resultReason/resultMessage)
 * - ERR_KMIP_KEY               the server returned an object that is not an AES-256 symmetric key
 * - ERR_KMIP_CONNECT           a node could not be reached (refused, reset, unknown host)
 * - ERR_KMIP_TLS               the TLS handshake failed (unknown CA, no/unaccepted client certificate, name mismatch)
 * - ERR_KMIP_TIMEOUT           a node did not connect or answer within the timeout
 * - ERR_KMIP_CLOSED            the connection closed before the answer was complete (or the client was closed)
 * - ERR_KEY_RETIRED            the key is not Active (revoked by a deep rekey, compromised, …) and retired keys
 *                              were not allowed: KMIP Get still returns a revoked key, so vmseal checks State itself
 * - ERR_KMS_UNAVAILABLE        no node of the cluster answered; `failures` names each node and its reason
 */
export type KmipErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_KMIP_TTLV'
  | 'ERR_KMIP_PROTOCOL'
  | 'ERR_KMIP_OPERATION_FAILED'
  | 'ERR_KMIP_KEY'
  | 'ERR_KMIP_CONNECT'
  | 'ERR_KMIP_TLS'
  | 'ERR_KMIP_TIMEOUT'
  | 'ERR_KMIP_CLOSED'
  | 'ERR_KEY_RETIRED'
  | 'ERR_KMS_UNAVAILABLE';

/** One node's reason for failing, as recorded in an ERR_KMS_UNAVAILABLE error. */
export interface KmipNodeFailure {
  /** "host:port" */
  readonly endpoint: string;
  readonly code: string;
  readonly message: string;
}

export interface KmipErrorDetails {
  /** KMIP operation name, e.g. "Get". */
  operation?: string;
  /** "host:port" of the node that answered (or failed). */
  endpoint?: string;
  /** KMIP Result Status name, e.g. "OperationFailed". */
  resultStatus?: string;
  /** KMIP Result Reason name, e.g. "ItemNotFound". */
  resultReason?: string;
  /** The server's Result Message text, verbatim. */
  resultMessage?: string;
  /** For ERR_KMS_UNAVAILABLE (and an all-nodes ERR_KMIP_TLS): every node tried and why it failed. */
  failures?: KmipNodeFailure[];
  cause?: unknown;
}

/** The one error class of the KMIP layer; branch on `code`. */
export class KmipError extends VmsealError {
  declare readonly code: KmipErrorCode;
  readonly operation?: string;
  readonly endpoint?: string;
  readonly resultStatus?: string;
  readonly resultReason?: string;
  readonly resultMessage?: string;
  readonly failures?: KmipNodeFailure[];

  constructor(code: KmipErrorCode, message: string, details: KmipErrorDetails = {}) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    if (details.operation !== undefined) this.operation = details.operation;
    if (details.endpoint !== undefined) this.endpoint = details.endpoint;
    if (details.resultStatus !== undefined) this.resultStatus = details.resultStatus;
    if (details.resultReason !== undefined) this.resultReason = details.resultReason;
    if (details.resultMessage !== undefined) this.resultMessage = details.resultMessage;
    if (details.failures !== undefined) this.failures = details.failures;
  }
}

/** Node-level codes after which the next node of a cluster is tried (a KMIP answer is never one of them). */
export const FAILOVER_CODES: ReadonlySet<string> = new Set([
  'ERR_KMIP_CONNECT',
  'ERR_KMIP_TLS',
  'ERR_KMIP_TIMEOUT',
  'ERR_KMIP_CLOSED',
  'ERR_KMIP_TTLV',
  'ERR_KMIP_PROTOCOL',
]);
