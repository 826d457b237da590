/**
 * TLS for NBD (NBD_OPT_STARTTLS): the server's credentials checked once at start, and the upgrade of
 * a connection's plain socket to TLS after STARTTLS was acknowledged. Client certificates are asked
 * for, and required, only when a CA to verify them was given.
 */
import { Server, TLSSocket, createSecureContext } from 'node:tls';
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
  /** The credentials, checked (a secure context was built from them once). */
  readonly credentials: { cert: string | Buffer; key: string | Buffer; ca?: string | Buffer };
  /** A client certificate signed by `ca` is required. */
  readonly clientAuth: boolean;
}

function isPem(v: unknown): v is string | Buffer {
  return (typeof v === 'string' || Buffer.isBuffer(v)) && v.length > 0;
}

/** Check the credentials once, so that a bad certificate fails serve(), not each client. */
export function tlsServerContext(tls: unknown): TlsServerContext {
  if (tls === null || typeof tls !== 'object' || !isPem((tls as ServeTls).cert) || !isPem((tls as ServeTls).key)) {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected { cert, key, ca? } (PEM text) for tls but received ${describeValue(tls)}`);
  }
  const { cert, key, ca } = tls as ServeTls;
  if (ca !== undefined && !isPem(ca)) throw new ServeError('ERR_INVALID_ARGUMENT', `Expected PEM text for tls.ca but received ${describeValue(ca)}`);
  const credentials = { cert, key, ...(ca !== undefined ? { ca } : {}) };
  try {
    createSecureContext(credentials);
  } catch (err) {
    // OpenSSL's reason (bad PEM, key does not match the certificate); never the key itself.
    throw new ServeError('ERR_SERVE_TLS', `the TLS certificate, key or CA cannot be used: ${(err as Error).message}`, { cause: err });
  }
  return { credentials, clientAuth: ca !== undefined };
}

/**
 * Run a server-side TLS handshake on `socket` and resolve with the TLS socket; rejects (the
 * socket destroyed) if it fails, e.g. a client certificate missing or signed by another CA.
 *
 * A tls.Server that never listens is fed this one socket: a TLSSocket made by hand does not
 * verify the client's certificate (node only does that for sockets of a tls.Server), and its
 * `authorized` flag is what tells us the chain ends at our CA.
 */
export function upgradeToTls(socket: Socket, tls: TlsServerContext): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      reject(new Error(`TLS handshake failed: ${why}`));
    };
    const server = new Server({
      ...tls.credentials,
      // TLS 1.2 at least, as the NBD TLS document asks.
      minVersion: 'TLSv1.2',
      requestCert: tls.clientAuth,
      // Checked below, so that the refusal is logged with its reason.
      rejectUnauthorized: false,
    });
    server.once('secureConnection', (secure: TLSSocket) => {
      if (tls.clientAuth && !secure.authorized) {
        secure.destroy();
        fail(`client certificate refused: ${String(secure.authorizationError ?? 'none sent')}`);
        return;
      }
      settled = true;
      socket.removeListener('close', onClose);
      resolve(secure);
    });
    server.once('tlsClientError', (err: Error) => fail(err.message));
    const onClose = (): void => fail('the client closed the connection');
    socket.once('close', onClose);
    server.emit('connection', socket);
  });
}
