/**
 * The host: `serve()` opens and locks each disk, listens on a Unix socket (the default) or an
 * explicit TCP address, and runs one Connection per client until `close()`.
 */
import { createServer, createConnection, isIP, type Server, type Socket } from 'node:net';
import { chmod, lstat, mkdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { describeValue } from '../errors.js';
import { openDisk, readEncryptionParams, type EncryptedDisk } from '../disk/index.js';
import type { UnlockOptions } from '../keys/index.js';
import type { VirtualDisk } from '../vmdk/index.js';
import { acquireLock, type DiskLock } from '../pipeline/lock.js';
import { PayloadBudget } from './budget.js';
import { BufferPool } from './buffers.js';
import { Connection, type ConnectionHost } from './connection.js';
import { ServeError } from './errors.js';
import { Export, type ExportInfo } from './export.js';
import { MAX_STRING_BYTES } from './protocol.js';
import { tlsServerContext, type ServeTls, type TlsServerContext } from './tls.js';

export interface ServeDisk {
  path: string;
  /** Export name (default: the file name without `.vmdk`). */
  name?: string;
  /** Serve read-only, under a shared lock (default: the `readOnly` of the options). */
  readOnly?: boolean;
  /** Most connections at once (default: the `shared` of the options). */
  shared?: number;
}

/** Where to listen: a Unix socket path, or a TCP host and port (port 0: any free port). */
export type ServeListen = { socket: string } | { host: string; port: number };

export interface ServeOptions {
  disks: ServeDisk[];
  /** Default: a Unix socket `$XDG_RUNTIME_DIR/vmseal/nbd.sock`, else `<tmpdir>/vmseal-<uid>/nbd.sock`. */
  listen?: ServeListen;
  /** How to unlock encrypted disks: one UnlockOptions for all, or a function per disk path. */
  keys?: UnlockOptions | ((path: string) => Promise<UnlockOptions>);
  /** Default for every disk (default: false). */
  readOnly?: boolean;
  /** Default connections per export (default: 1 for writable exports, 16 for read-only ones). */
  shared?: number;
  /** Refuse NBD_OPT_LIST and name no other export in errors (default: false). */
  noList?: boolean;
  /**
   * TLS credentials (PEM text). When given, TLS is required of every client (NBD_OPT_STARTTLS), and
   * with `ca` every client must present a certificate signed by it.
   */
  tls?: ServeTls;
  /** Allow a TCP address that is not loopback without TLS (default: false). */
  insecurePlaintext?: boolean;
  /** Allow a TCP address that is not loopback with TLS but without client certificates (no `tls.ca`; default: false). */
  insecureNoClientAuth?: boolean;
  /** Bytes of request and reply payloads held at once over all connections (default: 64 MiB). */
  payloadBudget?: number;
  /** A client that has not chosen an export (GO or EXPORT_NAME) within this many ms is disconnected (default: 30000). */
  handshakeTimeoutMs?: number;
  /** One line per connection and per error (never key material). */
  log?: (line: string) => void;
}

export type ServeAddress = { transport: 'unix'; path: string } | { transport: 'tcp'; host: string; port: number };

export interface NbdHost {
  address(): ServeAddress;
  /** The URI a client uses for an export: `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME`. */
  uri(name: string): string;
  exports(): ExportInfo[];
  /** Stop listening, answer the requests in flight, flush and close every disk, release the locks. */
  close(): Promise<void>;
}

export const DEFAULT_PAYLOAD_BUDGET = 64 * 1024 * 1024;
/** Longer than any real client needs to negotiate (qemu-nbd allows 10 s), short enough to shed idle sockets. */
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
const DEFAULT_SHARED_READ_ONLY = 16;

/** Default export name: the file name without `.vmdk`. */
export function defaultExportName(path: string): string {
  return basename(path).replace(/\.vmdk$/i, '');
}

/** The default socket: in a private (0700) folder of the runtime directory. */
export function defaultSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  const runtime = env.XDG_RUNTIME_DIR;
  const folder = runtime ? join(runtime, 'vmseal') : join(tmpdir(), `vmseal-${process.getuid?.() ?? 'user'}`);
  return join(folder, 'nbd.sock');
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || host === '0:0:0:0:0:0:0:1';
}

function checkName(name: string, path: string): void {
  if (name.length === 0 || Buffer.byteLength(name) > MAX_STRING_BYTES || /[\x00-\x1f?#]/.test(name)) {
    throw new ServeError(
      'ERR_SERVE_EXPORT',
      `export name ${JSON.stringify(name)} of ${path} is not valid: give 1 to 4096 bytes without control characters, '?' or '#'`,
    );
  }
}

function checkCount(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected a positive integer for ${what} but received ${describeValue(value)}`);
  }
  return value;
}

/** Lock and open one disk (unlocking it if encrypted); the lock is released if opening fails. */
async function openExport(spec: ServeDisk, name: string, options: ServeOptions): Promise<Export> {
  const readOnly = spec.readOnly ?? options.readOnly ?? false;
  const shared = checkCount(spec.shared ?? options.shared ?? (readOnly ? DEFAULT_SHARED_READ_ONLY : 1), 'shared');
  const lock: DiskLock = await acquireLock(spec.path, 'serve', readOnly ? 'shared' : 'exclusive');
  try {
    const encrypted = (await readEncryptionParams(spec.path)) !== null;
    let keys: UnlockOptions | undefined;
    if (encrypted && options.keys !== undefined) keys = typeof options.keys === 'function' ? await options.keys(spec.path) : options.keys;
    const disk: VirtualDisk | EncryptedDisk = await openDisk(spec.path, { readOnly, ...(keys ? { keys } : {}) });
    return new Export(name, disk, { readOnly, shared, lock });
  } catch (err) {
    await lock.release();
    throw err;
  }
}

/** A stale socket file (its server is gone) is removed; a live one is refused. */
async function clearSocketPath(path: string): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (!st) return;
  if (!st.isSocket()) throw new ServeError('ERR_SERVE_LISTEN', `cannot listen on ${path}: a file that is not a socket is there`);
  const live = await new Promise<boolean>((done) => {
    const s = createConnection(path);
    s.once('connect', () => {
      s.destroy();
      done(true);
    });
    s.once('error', () => done(false));
  });
  if (live) throw new ServeError('ERR_SERVE_LISTEN', `cannot listen on ${path}: another server is listening there`);
  await rm(path, { force: true });
}

/** Make the default socket's folder, private to this user. */
async function privateFolder(folder: string): Promise<void> {
  await mkdir(folder, { recursive: true, mode: 0o700 });
  const st = await stat(folder);
  if (st.uid !== process.getuid?.() || (st.mode & 0o077) !== 0) {
    throw new ServeError('ERR_SERVE_LISTEN', `the socket folder ${folder} is not private (it must be owned by you with mode 0700)`);
  }
}

function listenOn(server: Server, listen: ServeListen): Promise<void> {
  return new Promise((done, fail) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      const where = 'socket' in listen ? listen.socket : `${listen.host}:${listen.port}`;
      fail(new ServeError('ERR_SERVE_LISTEN', `cannot listen on ${where} (${err.code ?? err.message})`, { cause: err }));
    };
    server.once('error', onError);
    const ready = (): void => {
      server.removeListener('error', onError);
      done();
    };
    if ('socket' in listen) server.listen(listen.socket, ready);
    else server.listen(listen.port, listen.host, ready);
  });
}

/** What a non-loopback address needs: TLS and client certificates, unless waived. */
interface Security {
  tls: TlsServerContext | undefined;
  insecurePlaintext: boolean;
  insecureNoClientAuth: boolean;
}

function checkExposure(host: string, port: number, sec: Security): void {
  if (isLoopback(host)) return;
  if (!sec.tls && !sec.insecurePlaintext) {
    throw new ServeError(
      'ERR_SERVE_INSECURE',
      `refusing to serve plaintext disks on ${host}:${port}, which is not a loopback address: anyone who can connect reads and writes them; give TLS credentials (tls / --tls-cert, --tls-key, --tls-ca)`,
    );
  }
  if (sec.tls && !sec.tls.clientAuth && !sec.insecureNoClientAuth) {
    throw new ServeError(
      'ERR_SERVE_INSECURE',
      `refusing to serve disks on ${host}:${port}, which is not a loopback address, to clients without a certificate: give a CA to verify them (tls.ca / --tls-ca)`,
    );
  }
}

function checkListen(listen: unknown, sec: Security): ServeListen | undefined {
  if (listen === undefined) return undefined;
  if (listen !== null && typeof listen === 'object' && 'socket' in listen && typeof listen.socket === 'string' && listen.socket.length > 0)
    return { socket: listen.socket };
  if (listen !== null && typeof listen === 'object' && 'host' in listen && 'port' in listen) {
    const { host, port } = listen as { host: unknown; port: unknown };
    if (typeof host !== 'string' || host.length === 0 || typeof port !== 'number' || !Number.isInteger(port) || port < 0 || port > 65535) {
      throw new ServeError(
        'ERR_INVALID_ARGUMENT',
        `Expected a host name and a port 0..65535 for listen but received ${describeValue(host)} and ${describeValue(port)}`,
      );
    }
    checkExposure(host, port, sec);
    return { host, port };
  }
  throw new ServeError('ERR_INVALID_ARGUMENT', `Expected { socket } or { host, port } for listen but received ${describeValue(listen)}`);
}

/**
 * Serve disks over NBD. Resolves once every disk is open and the server listens; rejects (with
 * nothing left open or locked) if a disk cannot be locked, opened or unlocked, or the address
 * cannot be listened on.
 */
export async function serve(options: ServeOptions): Promise<NbdHost> {
  if (options === null || typeof options !== 'object')
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected an options object but received ${describeValue(options)}`);
  if (!Array.isArray(options.disks) || options.disks.length === 0) {
    throw new ServeError(
      'ERR_INVALID_ARGUMENT',
      `Expected a non-empty array of disks ({ path, name?, readOnly? }) but received ${describeValue(options.disks)}`,
    );
  }
  const tls = options.tls === undefined ? undefined : tlsServerContext(options.tls);
  const listenArg = checkListen(options.listen, {
    tls,
    insecurePlaintext: options.insecurePlaintext === true,
    insecureNoClientAuth: options.insecureNoClientAuth === true,
  });
  const budget = new PayloadBudget(options.payloadBudget === undefined ? DEFAULT_PAYLOAD_BUDGET : checkCount(options.payloadBudget, 'payloadBudget'));
  // Idle reusable buffers: half the budget, so that the budget's payloads and the idle ones together stay within 1.5× of it.
  const buffers = new BufferPool(Math.floor(budget.limit / 2));
  const handshakeTimeoutMs =
    options.handshakeTimeoutMs === undefined ? DEFAULT_HANDSHAKE_TIMEOUT_MS : checkCount(options.handshakeTimeoutMs, 'handshakeTimeoutMs');
  const log = options.log ?? (() => undefined);
  const names = new Map<string, string>();
  for (const d of options.disks) {
    if (d === null || typeof d !== 'object' || typeof d.path !== 'string' || d.path.length === 0) {
      throw new ServeError('ERR_INVALID_ARGUMENT', `Expected { path, name?, readOnly? } for each disk but received ${describeValue(d)}`);
    }
    const name = d.name ?? defaultExportName(d.path);
    checkName(name, d.path);
    const other = names.get(name);
    if (other !== undefined) {
      throw new ServeError('ERR_SERVE_EXPORT', `two disks would be served as export '${name}' (${other} and ${d.path}): give each a name (--export NAME=DISK)`);
    }
    names.set(name, d.path);
  }

  const exports = new Map<string, Export>();
  const connections = new Set<Connection>();
  /** Every accepted socket, also after its Connection ended (a client may keep a half-closed socket open). */
  const sockets = new Set<Socket>();
  let nextId = 1;
  const host: ConnectionHost = {
    findExport(name) {
      if (name === '' && exports.size === 1) return [...exports.values()][0];
      return exports.get(name);
    },
    exportList: () => [...exports.values()],
    noList: options.noList === true,
    budget,
    buffers,
    handshakeTimeoutMs,
    ...(tls ? { tls } : {}),
    log,
  };
  // Handle connections from the moment the server listens (its socket's mode is set just after).
  const server = createServer((socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    const c = new Connection(socket, host, nextId++);
    log(`connection ${c.id} (${c.peer}) opened`);
    connections.add(c);
    void c.done.finally(() => connections.delete(c));
  });
  let socketPath: string | undefined;
  try {
    for (const d of options.disks) {
      const name = d.name ?? defaultExportName(d.path);
      exports.set(name, await openExport(d, name, options));
    }
    const listen = listenArg ?? { socket: defaultSocketPath() };
    if ('socket' in listen) {
      socketPath = resolve(listen.socket);
      if (listenArg === undefined) await privateFolder(dirname(socketPath));
      await clearSocketPath(socketPath);
      await listenOn(server, { socket: socketPath });
      await chmod(socketPath, 0o600);
    } else {
      await listenOn(server, listen);
    }
    // After listening, an accept error (EMFILE …) must not crash the process: log it, keep serving.
    server.on('error', (err: NodeJS.ErrnoException) => log(`server error: ${err.code ?? err.message}`));
  } catch (err) {
    server.close();
    for (const s of sockets) s.destroy();
    for (const e of exports.values()) await e.close().catch(() => undefined);
    throw err;
  }

  const addr = server.address();
  const address: ServeAddress =
    socketPath !== undefined
      ? { transport: 'unix', path: socketPath }
      : { transport: 'tcp', host: (listenArg as { host: string }).host, port: typeof addr === 'object' && addr ? addr.port : 0 };
  let closing: Promise<void> | undefined;

  return {
    address: () => ({ ...address }),
    uri: (name) => exportUri(address, name),
    exports: () => [...exports.values()].map((e) => e.info()),
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((done) => server.close(() => done()));
        for (const c of connections) c.stop();
        await Promise.allSettled([...connections].map((c) => c.done));
        // Replies are answered or given up by now; a client that keeps its socket open is cut off.
        for (const s of sockets) s.destroy();
        await stopped;
        if (socketPath !== undefined) await rm(socketPath, { force: true });
        const failures: unknown[] = [];
        for (const e of exports.values()) {
          try {
            await e.close();
          } catch (err) {
            log(`export ${e.name}: closing failed: ${(err as Error).message}`);
            failures.push(err);
          }
        }
        if (failures.length > 0) throw failures[0];
      })();
      return closing;
    },
  };
}

/** `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME` (IPv6 hosts in brackets). */
export function exportUri(address: ServeAddress, name: string): string {
  const n = encodeURIComponent(name);
  if (address.transport === 'unix') return `nbd+unix:///${n}?socket=${address.path}`;
  const h = isIP(address.host) === 6 ? `[${address.host}]` : address.host;
  return `nbd://${h}:${address.port}/${n}`;
}
