/**
 * TLS for NBD (NBD_OPT_STARTTLS): the server's credentials checked once at start, and the upgrade of
 * a connection's plain socket to TLS after STARTTLS was acknowledged. Client certificates are asked
 * for, and required, only when a CA to verify them was given.
 */
import { TLSSocket, createSecureContext, type SecureContext } from 'node:tls';
import type { Socket } from 'node:net';
import { describeValue } from '../errors.js';
import { ServeError } from './errors.js';

/** Server credentials, as PEM text (not file names: the CLI reads the files). */
export interface ServeTls {
  /** The server's certificate chain (PEM). */
  cert: string | Buffer;
  /** The server's private key (PEM, unencrypted). */
  key: string | Buffer;
  /** CA certificate(s) (PEM) that client certificates must be signed by; without it no client certificate is asked for. */
  ca?: string | Buffer;
}

/** What every connection needs to upgrade itself. */
export interface TlsServerContext {
  readonly context: SecureContext;
  /** A client certificate signed by `ca` is required. */
  readonly clientAuth: boolean;
}

function isPem(v: unknown): v is string | Buffer {
  return (typeof v === 'string' || Buffer.isBuffer(v)) && v.length > 0;
}

/** Check the credentials and build the context once, so that a bad certificate fails serve(), not each client. */
export function tlsServerContext(tls: unknown): TlsServerContext {
  if (tls === null || typeof tls !== 'object' || !isPem((tls as ServeTls).cert) || !isPem((tls as ServeTls).key)) {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected { cert, key, ca? } (PEM text) for tls but received ${describeValue(tls)}`);
  }
  const { cert, key, ca } = tls as ServeTls;
  if (ca !== undefined && !isPem(ca)) throw new ServeError('ERR_INVALID_ARGUMENT', `Expected PEM text for tls.ca but received ${describeValue(ca)}`);
  try {
    // TLS 1.2 at least, as the NBD TLS document asks.
    const context = createSecureContext({ cert, key, ...(ca !== undefined ? { ca } : {}), minVersion: 'TLSv1.2' });
    return { context, clientAuth: ca !== undefined };
  } catch (err) {
    // OpenSSL's reason (bad PEM, key does not match the certificate); never the key itself.
    throw new ServeError('ERR_SERVE_TLS', `the TLS certificate, key or CA cannot be used: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * Wrap `socket` in a server-side TLS session and wait for the handshake; rejects (the socket
 * destroyed) if it fails, e.g. a client certificate missing or signed by another CA.
 */
export function upgradeToTls(socket: Socket, tls: TlsServerContext): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = new TLSSocket(socket, {
      isServer: true,
      secureContext: tls.context,
      requestCert: tls.clientAuth,
      rejectUnauthorized: tls.clientAuth,
    });
    const onError = (err: Error): void => {
      secure.destroy();
      reject(new Error(`TLS handshake failed: ${err.message}`, { cause: err }));
    };
    secure.once('error', onError);
    secure.once('secure', () => {
      secure.removeListener('error', onError);
      // rejectUnauthorized already refused a bad certificate; this also covers a client that sent none.
      if (tls.clientAuth && !secure.authorized) {
        onError(new Error(`client certificate refused: ${String(secure.authorizationError ?? 'none sent')}`));
        return;
      }
      resolve(secure);
    });
  });
}
