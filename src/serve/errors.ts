import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of the NBD server. Errors of the layers below (opening, unlocking and locking a
 * disk: ERR_VMDK_*, ERR_WRONG_KEY, ERR_DISK_BUSY …) pass through unchanged.
 */
export type ServeErrorCode =
  | 'ERR_SERVE_LISTEN' // the socket or TCP address cannot be listened on (in use, folder missing, permissions)
  | 'ERR_SERVE_EXPORT' // an export name is empty, too long, or given twice
  | 'ERR_SERVE_INSECURE' // a TCP address that is not loopback, without TLS (or client certificates) and without the insecure opt-outs
  | 'ERR_SERVE_TLS' // the TLS certificate, key or CA cannot be used (bad PEM, key not matching the certificate)
  | 'ERR_SERVE_CONTROL' // the control socket cannot be set up: another server holds it, its folder is not private, or it cannot be listened on
  | 'ERR_SERVE_NO_SERVER' // no server answers on the control socket (none running there, or it went away mid-request)
  | 'ERR_SERVE_REQUEST' // a control request is not valid: not JSON, too long, unknown command, a missing or wrong field
  | 'ERR_SERVE_NO_EXPORT' // no export of that name (detach, unlock, snapshot)
  | 'ERR_SERVE_NOT_LOCKED' // unlock() of an export that is not locked (its disk is open and served)
  | 'ERR_SERVE_LOCKED' // snapshot() of a locked export: its key is unavailable, its disk is not open
  | 'ERR_SERVE_READ_ONLY' // snapshot() of a read-only export: it is served under a shared lock, others may be reading it
  | 'ERR_SERVE_CLOSED' // attach(), detach(), unlock() or snapshot() after close() began: the host is stopping
  | 'ERR_SERVE_INTERNAL' // a control request failed unexpectedly on the server (a bug; the server's log has it)
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad option of serve()

/** The one error class of src/serve. */
export class ServeError extends VmsealError {
  declare readonly code: ServeErrorCode;

  constructor(code: ServeErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}
