/**
 * One TLS connection to one KMIP node, carrying one request at a time.
 *
 * Framing: the KMIP stream is a sequence of whole TTLV messages. A response is read as its 8-byte
 * header (tag 0x42007B, type Structure, length), then exactly `length` more bytes. Bytes that
 * arrive when no request is outstanding, or beyond the announced length, are a protocol error
 * (vmseal never pipelines), and the connection is dropped.
 *
 * Idle connections are `unref`ed so that a pooled connection never keeps the process alive; a
 * request `ref`s the socket while it waits.
 */
import { createRequire } from 'node:module';
import type tls from 'node:tls';
import { KmipError, type KmipErrorCode } from './errors.js';
import { Tag } from './tags.js';
import { TTLV_HEADER_LENGTH, messageLengthFromHeader } from './ttlv.js';

// node:tls (and net, stream under it) is loaded when KMIP is first used, not at every start-up of
// a command that uses local keys only.
const requireFromHere = createRequire(import.meta.url);
const tlsModule = (): typeof tls => requireFromHere('node:tls') as typeof tls;

/** Either a prepared secure context (ca + client identity), or the PEMs themselves. */
export interface TlsIdentity {
  readonly secureContext?: tls.SecureContext;
  readonly ca?: string | Buffer | ReadonlyArray<string | Buffer>;
  readonly cert?: string | Buffer;
  readonly key?: string | Buffer;
}

export interface ConnectOptions extends TlsIdentity {
  readonly host: string;
  readonly port: number;
  /** Name the server certificate must carry (default: host). Sent as SNI unless it is an IP address. */
  readonly servername?: string;
  readonly timeoutMs: number;
  readonly maxMessageSize: number;
}

const TLS_ERROR = /^(ERR_SSL_|ERR_TLS_|UNABLE_TO_|CERT_|DEPTH_ZERO_|SELF_SIGNED_|HOSTNAME_|ERR_OSSL_)/;

/** Classify a socket error into the node-level code reported for it. */
function classify(err: NodeJS.ErrnoException, phase: 'connecting' | 'handshaking' | 'open'): KmipErrorCode {
  const code = err.code ?? '';
  if (TLS_ERROR.test(code) || /\bSSL\b|alert|certificate/i.test(err.message)) return 'ERR_KMIP_TLS';
  // A peer that resets or closes during the handshake has refused our TLS session or identity.
  if (phase === 'handshaking') return 'ERR_KMIP_TLS';
  if (phase === 'open') return 'ERR_KMIP_CLOSED';
  return 'ERR_KMIP_CONNECT';
}

interface Pending {
  resolve(frame: Buffer): void;
  reject(err: KmipError): void;
  timer: NodeJS.Timeout;
  chunks: Buffer[];
  received: number;
  expected: number; // 0 until the header is in
}

export class KmipConnection {
  readonly endpoint: string;
  private readonly socket: tls.TLSSocket;
  private readonly maxMessageSize: number;
  private pending: Pending | undefined;
  private closedReason: KmipError | undefined;
  /** Number of requests this connection has completed (a reused connection has > 0). */
  completed = 0;
  /**
   * Set when a request failed before a single response byte arrived: on a reused connection this is
   * the signature of a server that dropped an idle connection, and the request may be resent.
   */
  failedBeforeAnswer = false;
  /** When the last request completed (or the connection opened), ms since the epoch. */
  lastUsed = Date.now();

  private constructor(socket: tls.TLSSocket, endpoint: string, maxMessageSize: number) {
    this.socket = socket;
    this.endpoint = endpoint;
    this.maxMessageSize = maxMessageSize;
    socket.setNoDelay(true); // one small request per round trip: never wait for Nagle
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.fail(new KmipError(classify(err, 'open'), `connection to ${endpoint} failed: ${err.message}`, { endpoint, cause: err }));
    });
    socket.on('close', () => {
      this.fail(new KmipError('ERR_KMIP_CLOSED', `${endpoint} closed the connection`, { endpoint }));
    });
    socket.unref();
  }

  /** Open a TLS connection (TLS 1.2 or later, server certificate and name verified). */
  static connect(opts: ConnectOptions): Promise<KmipConnection> {
    const endpoint = `${opts.host}:${opts.port}`;
    return new Promise((resolve, reject) => {
      let phase: 'connecting' | 'handshaking' = 'connecting';
      const servername = opts.servername ?? opts.host;
      const socket = tlsModule().connect({
        host: opts.host,
        port: opts.port,
        ...(opts.secureContext !== undefined && { secureContext: opts.secureContext }),
        ...(opts.ca !== undefined && { ca: opts.ca as string | Buffer | Array<string | Buffer> }),
        ...(opts.cert !== undefined && { cert: opts.cert }),
        ...(opts.key !== undefined && { key: opts.key }),
        minVersion: 'TLSv1.2',
        rejectUnauthorized: true,
        // SNI must not be an IP address; the certificate check still uses `servername`.
        ...(!/^[\d.]+$|:/.test(servername) && { servername }),
        checkServerIdentity: (_host, cert) => tlsModule().checkServerIdentity(servername, cert),
      });
      const settle = (err: KmipError | undefined): void => {
        clearTimeout(timer);
        socket.removeListener('error', onError);
        socket.removeListener('close', onClose);
        socket.removeListener('connect', onConnect);
        socket.removeListener('secureConnect', onSecure);
        if (err) {
          socket.on('error', () => undefined); // a late error from the dying socket must not go unhandled
          socket.destroy();
          reject(err);
        } else {
          resolve(new KmipConnection(socket, endpoint, opts.maxMessageSize));
        }
      };
      const onConnect = (): void => {
        phase = 'handshaking';
      };
      const onSecure = (): void => settle(undefined);
      const onError = (err: NodeJS.ErrnoException): void => {
        const code = classify(err, phase);
        const text = code === 'ERR_KMIP_TLS' ? `TLS handshake with ${endpoint} failed: ${err.message}` : `could not connect to ${endpoint}: ${err.message}`;
        settle(new KmipError(code, text, { endpoint, cause: err }));
      };
      const onClose = (): void => {
        settle(
          new KmipError(
            phase === 'handshaking' ? 'ERR_KMIP_TLS' : 'ERR_KMIP_CONNECT',
            `${endpoint} closed the connection during the ${phase === 'handshaking' ? 'TLS handshake' : 'connect'}`,
            { endpoint },
          ),
        );
      };
      const timer = setTimeout(() => {
        settle(
          new KmipError(
            'ERR_KMIP_TIMEOUT',
            `${endpoint} did not complete ${phase === 'handshaking' ? 'the TLS handshake' : 'the TCP connect'} within ${opts.timeoutMs} ms`,
            { endpoint },
          ),
        );
      }, opts.timeoutMs);
      socket.once('connect', onConnect);
      socket.once('secureConnect', onSecure);
      socket.on('error', onError);
      socket.once('close', onClose);
    });
  }

  /** True while the connection can take a request. */
  get isOpen(): boolean {
    return this.closedReason === undefined && !this.socket.destroyed;
  }

  get isBusy(): boolean {
    return this.pending !== undefined;
  }

  /**
   * Send one request message and resolve with the whole response message. Rejects with
   * ERR_KMIP_TIMEOUT (and drops the connection) when no complete answer arrives in `timeoutMs`.
   */
  request(message: Buffer, timeoutMs: number): Promise<Buffer> {
    if (!this.isOpen)
      return Promise.reject(this.closedReason ?? new KmipError('ERR_KMIP_CLOSED', `connection to ${this.endpoint} is closed`, { endpoint: this.endpoint }));
    if (this.pending) return Promise.reject(new KmipError('ERR_INVALID_ARGUMENT', `connection to ${this.endpoint} already has a request in flight`));
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(new KmipError('ERR_KMIP_TIMEOUT', `${this.endpoint} did not answer within ${timeoutMs} ms`, { endpoint: this.endpoint }));
      }, timeoutMs);
      this.pending = { resolve, reject, timer, chunks: [], received: 0, expected: 0 };
      this.socket.ref();
      this.socket.write(message);
    });
  }

  private onData(chunk: Buffer): void {
    const p = this.pending;
    if (!p) {
      chunk.fill(0);
      this.fail(
        new KmipError('ERR_KMIP_PROTOCOL', `${this.endpoint} sent ${chunk.length} bytes while no request was outstanding`, { endpoint: this.endpoint }),
      );
      return;
    }
    p.chunks.push(chunk);
    p.received += chunk.length;
    try {
      if (p.expected === 0 && p.received >= TTLV_HEADER_LENGTH) {
        const head = p.chunks.length === 1 ? p.chunks[0]!.subarray(0, TTLV_HEADER_LENGTH) : Buffer.concat(p.chunks).subarray(0, TTLV_HEADER_LENGTH);
        p.expected = messageLengthFromHeader(head, Tag.ResponseMessage, this.maxMessageSize);
      }
    } catch (err) {
      this.fail(
        err instanceof KmipError ? new KmipError(err.code, `response from ${this.endpoint}: ${err.message}`, { endpoint: this.endpoint }) : (err as KmipError),
      );
      return;
    }
    if (p.expected === 0 || p.received < p.expected) return;
    if (p.received > p.expected) {
      this.fail(
        new KmipError('ERR_KMIP_PROTOCOL', `${this.endpoint} sent ${p.received - p.expected} bytes beyond the ${p.expected}-byte response`, {
          endpoint: this.endpoint,
        }),
      );
      return;
    }
    const frame = Buffer.concat(p.chunks, p.received);
    for (const c of p.chunks) c.fill(0);
    clearTimeout(p.timer);
    this.pending = undefined;
    this.completed++;
    this.lastUsed = Date.now();
    this.socket.unref();
    p.resolve(frame);
  }

  /** Drop the connection and reject the outstanding request, if any, with `err`. */
  private fail(err: KmipError): void {
    if (this.closedReason === undefined) this.closedReason = err;
    const p = this.pending;
    this.pending = undefined;
    if (!this.socket.destroyed) this.socket.destroy();
    if (p) {
      clearTimeout(p.timer);
      for (const c of p.chunks) c.fill(0);
      this.failedBeforeAnswer = p.received === 0;
      p.reject(err);
    }
  }

  close(): void {
    this.fail(new KmipError('ERR_KMIP_CLOSED', `connection to ${this.endpoint} was closed by the client`, { endpoint: this.endpoint }));
  }
}
