/**
 * Validation of KmipClient / KmipKeyProvider options. Messages follow one shape:
 * "Expected <what> for <option> but received <description>", never echoing secrets.
 */
import { createRequire } from 'node:module';
import type tls from 'node:tls';
import { expected } from '../errors.js';
import type { KmipClientOptions, KmipEndpoint } from './client.js';
import { KmipError } from './errors.js';
import type { ProtocolVersion } from './messages.js';

// node:tls (and net, stream under it) is loaded when KMIP is first used, not at every start-up of
// a command that uses local keys only.
const requireFromHere = createRequire(import.meta.url);
const tlsModule = (): typeof tls => requireFromHere('node:tls') as typeof tls;

export const DEFAULT_TIMEOUT_MS = 10_000;
export const DEFAULT_PROTOCOL_VERSION: ProtocolVersion = { major: 1, minor: 2 };
export const DEFAULT_MAX_CONNECTIONS_PER_NODE = 2;
export const DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;

/** Protocol versions vmseal can encode requests for. */
export const SUPPORTED_VERSIONS: readonly ProtocolVersion[] = [
  { major: 2, minor: 0 },
  { major: 1, minor: 4 },
  { major: 1, minor: 3 },
  { major: 1, minor: 2 },
  { major: 1, minor: 1 },
  { major: 1, minor: 0 },
];

export function invalid(option: string, what: string, value: unknown): KmipError {
  return new KmipError('ERR_INVALID_ARGUMENT', expected(what, option, value));
}

function isPemish(v: unknown): v is string | Buffer {
  if (typeof v === 'string') return v.includes('-----BEGIN ');
  if (Buffer.isBuffer(v)) return v.includes('-----BEGIN ');
  return false;
}

function checkPem(option: string, v: unknown): string | Buffer {
  if (!isPemish(v)) {
    const hint = typeof v === 'string' && !v.includes('\n') ? ' (pass the PEM file’s contents, not its path)' : '';
    throw new KmipError('ERR_INVALID_ARGUMENT', `${expected('PEM text (a string or Buffer containing "-----BEGIN")', option, v)}${hint}`);
  }
  return v;
}

function checkTimeout(option: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 3_600_000)
    throw invalid(option, 'an integer number of milliseconds between 1 and 3600000', v);
  return v;
}

export function parseProtocolVersion(v: unknown): ProtocolVersion {
  if (v === undefined) return DEFAULT_PROTOCOL_VERSION;
  let parsed: ProtocolVersion | undefined;
  if (typeof v === 'string') {
    const m = /^(\d)\.(\d)$/.exec(v);
    if (m) parsed = { major: Number(m[1]), minor: Number(m[2]) };
  } else if (typeof v === 'object' && v !== null) {
    const o = v as Record<string, unknown>;
    if (typeof o.major === 'number' && typeof o.minor === 'number') parsed = { major: o.major, minor: o.minor };
  }
  const ok = parsed && SUPPORTED_VERSIONS.some((s) => s.major === parsed!.major && s.minor === parsed!.minor);
  if (!ok) throw invalid('protocolVersion', 'one of "1.0", "1.1", "1.2", "1.3", "1.4", "2.0" (or { major, minor })', v);
  return parsed!;
}

function checkEndpoints(v: unknown): KmipEndpoint[] {
  if (!Array.isArray(v) || v.length === 0) throw invalid('endpoints', 'a non-empty array of { host, port }', v);
  return v.map((e: unknown, i: number) => {
    if (typeof e !== 'object' || e === null) throw invalid(`endpoints[${i}]`, 'an object { host, port }', e);
    const { host, port, servername } = e as Record<string, unknown>;
    if (typeof host !== 'string' || host.length === 0 || host.length > 255) throw invalid(`endpoints[${i}].host`, 'a non-empty host name or IP address', host);
    if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
      throw invalid(`endpoints[${i}].port`, 'an integer port between 1 and 65535', port);
    if (servername !== undefined && (typeof servername !== 'string' || servername.length === 0))
      throw invalid(`endpoints[${i}].servername`, 'a non-empty string', servername);
    return { host, port, ...(servername !== undefined && { servername: servername as string }) };
  });
}

/**
 * Load ca/cert/key into one TLS secure context, once: a PEM that does not parse or a key that does
 * not match its certificate fails here, at construction, instead of on every connect.
 */
function loadSecureContext(ca: string | Buffer | Array<string | Buffer>, cert: string | Buffer, key: string | Buffer): tls.SecureContext {
  try {
    return tlsModule().createSecureContext({ ca, cert, key, minVersion: 'TLSv1.2' });
  } catch (err) {
    // OpenSSL's reason (e.g. "PEM routines::no start line", "key values mismatch") never contains key bytes.
    throw new KmipError('ERR_INVALID_ARGUMENT', `Could not load the TLS identity from ca, cert and key: ${(err as Error).message}`, { cause: err });
  }
}

export interface ValidatedClientOptions {
  endpoints: KmipEndpoint[];
  ca: string | Buffer | Array<string | Buffer>;
  cert: string | Buffer;
  key: string | Buffer;
  username?: string;
  password?: string;
  timeoutMs: number;
  protocolVersion: ProtocolVersion;
  maxConnectionsPerNode: number;
  maxMessageSize: number;
  idleTimeoutMs: number;
  secureContext: tls.SecureContext;
}

export function validateClientOptions(options: KmipClientOptions): ValidatedClientOptions {
  if (typeof options !== 'object' || options === null) throw invalid('options', 'an object', options);
  const endpoints = checkEndpoints(options.endpoints);
  const ca = Array.isArray(options.ca) ? options.ca.map((c, i) => checkPem(`ca[${i}]`, c)) : checkPem('ca', options.ca);
  const cert = checkPem('cert', options.cert);
  const key = checkPem('key', options.key);
  const { username, password } = options;
  if (username !== undefined && (typeof username !== 'string' || username.length === 0)) throw invalid('username', 'a non-empty string', username);
  if (password !== undefined && typeof password !== 'string') throw invalid('password', 'a string', password);
  if (password !== undefined && username === undefined)
    throw new KmipError('ERR_INVALID_ARGUMENT', 'Expected username together with password but received only password');
  const maxConnectionsPerNode = options.maxConnectionsPerNode ?? DEFAULT_MAX_CONNECTIONS_PER_NODE;
  if (!Number.isInteger(maxConnectionsPerNode) || maxConnectionsPerNode < 1 || maxConnectionsPerNode > 64) {
    throw invalid('maxConnectionsPerNode', 'an integer between 1 and 64', options.maxConnectionsPerNode);
  }
  const maxMessageSize = options.maxMessageSize ?? DEFAULT_MAX_MESSAGE_SIZE;
  if (!Number.isInteger(maxMessageSize) || maxMessageSize < 64 || maxMessageSize > 64 * 1024 * 1024) {
    throw invalid('maxMessageSize', 'an integer number of bytes between 64 and 67108864', options.maxMessageSize);
  }
  return {
    endpoints,
    ca,
    cert,
    key,
    ...(username !== undefined && { username }),
    ...(password !== undefined && { password }),
    timeoutMs: checkTimeout('timeoutMs', options.timeoutMs, DEFAULT_TIMEOUT_MS),
    protocolVersion: parseProtocolVersion(options.protocolVersion),
    maxConnectionsPerNode,
    maxMessageSize,
    idleTimeoutMs: checkTimeout('idleTimeoutMs', options.idleTimeoutMs, DEFAULT_IDLE_TIMEOUT_MS),
    secureContext: loadSecureContext(ca, cert, key),
  };
}
