/**
 * The host: `serve()` opens and locks each disk, listens on a Unix socket (the default) or an
 * explicit TCP address, and runs one Connection per client until `close()`. An encrypted disk whose
 * key is unavailable (unavailable.ts) is served locked (locked.ts) until its key can be had.
 */
import { createServer, createConnection, isIP, type Server, type Socket } from 'node:net';
import { chmod, lstat, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { describeValue, expected } from '../errors.js';
import { assertNoJournal, openDisk, readEncryptionParams, type EncryptedDisk } from '../disk/index.js';
import type { UnlockOptions } from '../keys/index.js';
import type { VirtualDisk } from '../vmdk/index.js';
import { acquireLock, type DiskLock } from '../pipeline/lock.js';
import { PayloadBudget } from './budget.js';
import { BufferPool } from './buffers.js';
import { Connection, type ConnectionHost } from './connection.js';
import { ServeError } from './errors.js';
import { Export, type ExportInfo } from './export.js';
import { DEFAULT_UNLOCK_RETRY, LockedExport, readShape, type ExportEntry, type UnlockRetry } from './locked.js';
import { unavailableKey } from './unavailable.js';
import { MAX_STRING_BYTES } from './protocol.js';
import { tlsServerContext, type ServeTls, type TlsServerContext } from './tls.js';
import { claimControl, type ControlSocket } from './control.js';
import { privateFolder } from './private-folder.js';
import { snapshotExport } from './snapshot.js';
import { commitExport } from './commit.js';
import { openStateFileDisk, stateFileShape } from './vars-export.js';
import { isStateFile } from '../vm/index.js';

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
  /**
   * A connection whose replies have not moved (the client does not read them) for this many ms,
   * while it holds payload budget that other requests wait for, is disconnected (default: 30000).
   */
  stallTimeoutMs?: number;
  /**
   * Backoff of the provider retries of a locked export (an encrypted disk whose key provider is
   * unreachable): the first retry after about `initialMs`, each delay doubling up to `maxMs`, each
   * jittered to between half and all of it (default: `{ initialMs: 1000, maxMs: 60000 }`).
   */
  unlockRetry?: Partial<UnlockRetry>;
  /** One line per connection and per error (never key material). */
  log?: (line: string) => void;
  /**
   * A Unix socket for control commands (status, attach, detach, unlock, snapshot; JSON lines, see
   * docs/serve.md), mode 0600 in a private (0700) folder. Default: none.
   */
  control?: string;
}

export type ServeAddress = { transport: 'unix'; path: string } | { transport: 'tcp'; host: string; port: number };

export interface NbdHost {
  address(): ServeAddress;
  /** The URI a client uses for an export: `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME`. */
  uri(name: string): string;
  exports(): ExportInfo[];
  /** The control socket's path, when `control` was given. */
  controlPath(): string | undefined;
  /**
   * Open, lock and unlock (with the host's `keys`) one more disk and serve it to new clients at
   * once; an encrypted disk whose key provider is unreachable is attached locked, as at start. A
   * name already served gives ERR_SERVE_EXPORT, a call after close() began ERR_SERVE_CLOSED.
   */
  attach(disk: ServeDisk): Promise<ExportInfo>;
  /**
   * Stop serving an export: its connections stop reading requests, the ones in flight are
   * answered, then the disk is flushed, closed and its lock released. An unknown name gives
   * ERR_SERVE_NO_EXPORT.
   */
  detach(name: string): Promise<void>;
  /**
   * Unlock a locked export now with these key options (a recovery passphrase, other providers):
   * its disk is opened and served at once. Rejects with ServeError ERR_SERVE_NOT_LOCKED if the
   * export is not locked, ERR_SERVE_NO_EXPORT if there is no such export, ERR_SERVE_CLOSED once
   * close() began, and with the key layer's error (ERR_WRONG_KEY, ERR_DISK_LOCKED …) if the keys
   * do not open it — the export then stays locked and its retries go on.
   */
  unlock(name: string, keys: UnlockOptions): Promise<ExportInfo>;
  /**
   * Take a snapshot of a served disk, live (see snapshot.ts): new writes wait, the writes in flight
   * finish and are flushed, a child layer is made on the disk (`options.name`, default
   * `<base>-00000N.vmdk`; encrypted with the same DEK, unlocked with the host's `keys`), and the
   * export switches to it; the clients notice nothing. Resolves with the export's info (its `path`
   * is the new top) and the frozen `parent`. Rejects with ERR_SERVE_NO_EXPORT, ERR_SERVE_LOCKED (a
   * locked export), ERR_SERVE_READ_ONLY, ERR_SERVE_CLOSED, or the error of the layers below (the
   * export then serves its old disk, unchanged).
   */
  snapshot(name: string, options?: { name?: string }): Promise<ExportInfo & { parent: string }>;
  /**
   * Merge the top layer of a served chain (a live snapshot's child) back into its parent, live (see
   * commit.ts): new writes wait (a time that grows with the data written since the snapshot; reads
   * go on through the chain while the child's data is copied, and wait only for the switch), the journaled commit of `vmseal snapshot commit`
   * runs, and the export switches to the parent; the child is removed. Resolves with the export's
   * info (its `path` is the parent), the `removed` child, `bytesMoved` and `heldMs` (how long writes
   * waited). Rejects as snapshot() does, with ERR_NOT_A_SNAPSHOT when the export serves no chain,
   * or with the error of the layers below — before the commit's journal is written the export then
   * serves its chain, unchanged; after it (a full file system), the chain is refused until
   * `vmseal resume` of the child and the export fails its requests until it is detached.
   */
  commit(name: string): Promise<ExportInfo & { removed: string; bytesMoved: number; heldMs: number }>;
  /** Stop listening, answer the requests in flight, flush and close every disk, release the locks. */
  close(): Promise<void>;
}

export const DEFAULT_PAYLOAD_BUDGET = 64 * 1024 * 1024;
/** Longer than any real client needs to negotiate (qemu-nbd allows 10 s), short enough to shed idle sockets. */
const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;
/** NBD clients read their replies continuously: 30 s without a byte taken is a dead or hostile client. */
const DEFAULT_STALL_TIMEOUT_MS = 30_000;
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

function checkName(name: unknown, path: string): asserts name is string {
  if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name) > MAX_STRING_BYTES || /[\x00-\x1f?#]/.test(name)) {
    throw new ServeError(
      'ERR_SERVE_EXPORT',
      `export name ${typeof name === 'string' ? JSON.stringify(name) : describeValue(name)} of ${path} is not valid: give 1 to 4096 bytes without control characters, '?' or '#'`,
    );
  }
}

function checkCount(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected a positive integer for ${what} but received ${describeValue(value)}`);
  }
  return value;
}

/** The export name of a disk spec (its `name`, else its file name without `.vmdk`), checked. */
function exportNameOf(d: unknown): string {
  if (d === null || typeof d !== 'object' || typeof (d as ServeDisk).path !== 'string' || (d as ServeDisk).path.length === 0) {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected { path, name?, readOnly? } for each disk but received ${describeValue(d)}`);
  }
  const spec = d as ServeDisk;
  const name: unknown = spec.name ?? defaultExportName(spec.path);
  checkName(name, spec.path);
  return name;
}

function checkRetry(value: unknown): UnlockRetry {
  if (value === undefined) return DEFAULT_UNLOCK_RETRY;
  if (value === null || typeof value !== 'object') {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected { initialMs?, maxMs? } for unlockRetry but received ${describeValue(value)}`);
  }
  const v = value as Partial<UnlockRetry>;
  const initialMs = v.initialMs === undefined ? DEFAULT_UNLOCK_RETRY.initialMs : checkCount(v.initialMs, 'unlockRetry.initialMs');
  const maxMs = v.maxMs === undefined ? Math.max(initialMs, DEFAULT_UNLOCK_RETRY.maxMs) : checkCount(v.maxMs, 'unlockRetry.maxMs');
  if (maxMs < initialMs) {
    throw new ServeError('ERR_INVALID_ARGUMENT', expected(`a number of ms of at least unlockRetry.initialMs (${initialMs})`, 'unlockRetry.maxMs', maxMs));
  }
  return { initialMs, maxMs };
}

/** What opening an export needs of the host besides the disk's spec. */
interface OpenContext {
  options: ServeOptions;
  retry: UnlockRetry;
  log(line: string): void;
  /** Replace a locked export by its opened self in the host's table. */
  onUnlocked(exp: Export): void;
}

/** The key options of `path` from the host's `keys` (one for all, or a function per path). */
function keysOf(options: ServeOptions, path: string): Promise<UnlockOptions | undefined> {
  return typeof options.keys === 'function' ? options.keys(path) : Promise.resolve(options.keys);
}

/**
 * Lock and open one disk (unlocking it if encrypted). An encrypted disk whose key is unavailable
 * (KMS down) comes back locked, its lock held, its retries not yet started (LockedExport.start).
 * On any other failure the lock is released and the error thrown.
 */
async function openExport(spec: ServeDisk, name: string, ctx: OpenContext): Promise<ExportEntry> {
  const { options } = ctx;
  const readOnly = spec.readOnly ?? options.readOnly ?? false;
  const shared = checkCount(spec.shared ?? options.shared ?? (readOnly ? DEFAULT_SHARED_READ_ONLY : 1), 'shared');
  const lock: DiskLock = await acquireLock(spec.path, 'serve', readOnly ? 'shared' : 'exclusive');
  try {
    // First: a job killed midway (a live commit whose server died …) leaves the chain in states the
    // opens below would refuse with another error — the parent's CID changed by the commit's final
    // descriptor — whose advice (give up the child) loses data. The journal says what to do: resume.
    assertNoJournal(spec.path);
    // A state file (vmseal's container: UEFI variables) is served from memory (vars-export.ts). Its
    // provider down, it is served locked as a disk is, and unlocked by the same retries and unlock().
    if (await isStateFile(spec.path)) {
      const keys = (await keysOf(options, spec.path)) ?? {};
      const open = (k: UnlockOptions) => openStateFileDisk(spec.path, { keys: k, readOnly });
      try {
        return new Export(name, await open(keys), { readOnly, shared, lock, description: `encrypted state file ${spec.path}` });
      } catch (err) {
        const why = unavailableKey(err);
        if (!why) throw err;
        const shape = await stateFileShape(spec.path);
        const base = { name, path: spec.path, readOnly, shared, lock, keys, why, retry: ctx.retry, log: ctx.log, onUnlocked: ctx.onUnlocked };
        return new LockedExport({ ...base, open, what: 'encrypted state file' }, shape);
      }
    }
    const encrypted = (await readEncryptionParams(spec.path)) !== null;
    let keys: UnlockOptions | undefined;
    if (encrypted) keys = await keysOf(options, spec.path);
    let disk: VirtualDisk | EncryptedDisk;
    try {
      disk = await openDisk(spec.path, { readOnly, ...(keys ? { keys } : {}) });
    } catch (err) {
      const why = unavailableKey(err);
      if (!why || keys === undefined) throw err;
      const shape = await readShape(spec.path);
      return new LockedExport({ name, path: spec.path, readOnly, shared, lock, keys, why, retry: ctx.retry, log: ctx.log, onUnlocked: ctx.onUnlocked }, shape);
    }
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
 * Serve disks over NBD. Resolves once every disk is open (or locked: see below) and the server
 * listens; rejects (with nothing left open or locked) if a disk cannot be locked, opened or
 * unlocked, or the address cannot be listened on.
 *
 * An encrypted disk whose key is neither cached nor fetchable because its provider is unreachable
 * (unavailable.ts says which failures count) does not make serve() reject: it is served *locked*,
 * its lock held, listed, its clients refused, and opened as soon as a retry of the provider or
 * `unlock()` succeeds.
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
  const stallTimeoutMs = options.stallTimeoutMs === undefined ? DEFAULT_STALL_TIMEOUT_MS : checkCount(options.stallTimeoutMs, 'stallTimeoutMs');
  const log = options.log ?? (() => undefined);
  const retry = checkRetry(options.unlockRetry);
  const names = new Map<string, string>();
  for (const d of options.disks) {
    const name = exportNameOf(d);
    const other = names.get(name);
    if (other !== undefined) {
      throw new ServeError('ERR_SERVE_EXPORT', `two disks would be served as export '${name}' (${other} and ${d.path}): give each a name (--export NAME=DISK)`);
    }
    names.set(name, d.path);
  }
  // Claimed before any disk is opened (and unlocked, which may ask a KMS): a second server on the
  // same control path fails at once and opens nothing.
  const control: ControlSocket | undefined = options.control === undefined ? undefined : await claimControl(options.control);

  const exports = new Map<string, ExportEntry>();
  /** Names being opened by attach(): a second attach of one name is refused at once. */
  const attaching = new Set<string>();
  /** attach() and detach() calls in progress: close() waits for them. */
  const pending = new Set<Promise<unknown>>();
  /** Each live connection, its socket, and the export it last asked for (what detach() stops). */
  const connections = new Map<Connection, { socket: Socket; export?: ExportEntry }>();
  /** Every accepted socket, also after its Connection ended (a client may keep a half-closed socket open). */
  const sockets = new Set<Socket>();
  let nextId = 1;
  const findExport = (name: string): ExportEntry | undefined => {
    if (name === '' && exports.size === 1) return [...exports.values()][0];
    return exports.get(name);
  };
  const common: Omit<ConnectionHost, 'findExport'> = {
    exportList: () => [...exports.values()],
    noList: options.noList === true,
    budget,
    buffers,
    handshakeTimeoutMs,
    stallTimeoutMs,
    ...(tls ? { tls } : {}),
    log,
  };
  // Handle connections from the moment the server listens (its socket's mode is set just after).
  const server = createServer((socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    const entry: { socket: Socket; export?: ExportEntry } = { socket };
    const recording: ConnectionHost = {
      ...common,
      findExport(name) {
        const found = findExport(name);
        if (found) entry.export = found;
        return found;
      },
    };
    const c = new Connection(socket, recording, nextId++);
    log(`connection ${c.id} (${c.peer}) opened`);
    connections.set(c, entry);
    void c.done.finally(() => connections.delete(c));
  });
  const openContext: OpenContext = {
    options,
    retry,
    log,
    onUnlocked: (exp) => {
      if (exports.get(exp.name) instanceof LockedExport) exports.set(exp.name, exp);
    },
  };
  let socketPath: string | undefined;
  try {
    for (const d of options.disks) {
      const name = d.name ?? defaultExportName(d.path);
      exports.set(name, await openExport(d, name, openContext));
    }
    const listen = listenArg ?? { socket: defaultSocketPath() };
    if ('socket' in listen) {
      socketPath = resolve(listen.socket);
      if (listenArg === undefined) await privateFolder(dirname(socketPath), 'socket', 'ERR_SERVE_LISTEN');
      await clearSocketPath(socketPath);
      await listenOn(server, { socket: socketPath });
      await chmod(socketPath, 0o600);
    } else {
      await listenOn(server, listen);
    }
    // After listening, an accept error (EMFILE …) must not crash the process: log it, keep serving.
    server.on('error', (err: NodeJS.ErrnoException) => log(`server error: ${err.code ?? err.message}`));
    for (const e of exports.values()) if (e instanceof LockedExport) e.start();
  } catch (err) {
    server.close();
    for (const s of sockets) s.destroy();
    for (const e of exports.values()) await e.close().catch(() => undefined);
    await control?.close();
    throw err;
  }

  const addr = server.address();
  const address: ServeAddress =
    socketPath !== undefined
      ? { transport: 'unix', path: socketPath }
      : { transport: 'tcp', host: (listenArg as { host: string }).host, port: typeof addr === 'object' && addr ? addr.port : 0 };
  let closing: Promise<void> | undefined;
  const track = <T>(op: Promise<T>): Promise<T> => {
    pending.add(op);
    void op.then(
      () => pending.delete(op),
      () => pending.delete(op),
    );
    return op;
  };
  const stopped = (): ServeError => new ServeError('ERR_SERVE_CLOSED', 'the server is stopping: no export can be attached or detached now');
  const unknown = (name: unknown): ServeError =>
    new ServeError(
      'ERR_SERVE_NO_EXPORT',
      `no export is named ${typeof name === 'string' ? JSON.stringify(name) : describeValue(name)} (served: ${[...exports.keys()].join(', ') || 'none'})`,
    );

  /** The open, writable export `name` for a change of its layers (`what` it is, and `instead` for a read-only one), else the error. */
  const layeredExport = (name: unknown, what: string, instead: string): Export => {
    if (closing) throw new ServeError('ERR_SERVE_CLOSED', `cannot ${what} export ${String(name)}: the host is stopping`);
    const e = typeof name === 'string' ? exports.get(name) : undefined;
    if (!e) throw unknown(name);
    if (e instanceof LockedExport) {
      throw new ServeError('ERR_SERVE_LOCKED', `cannot ${what} export ${String(name)}: it is locked (${e.reason}); unlock it first (vmseal host unlock)`);
    }
    if (e.readOnly) {
      throw new ServeError(
        'ERR_SERVE_READ_ONLY',
        `cannot ${what} export ${String(name)}: it is served read-only (a shared lock: other readers may have the disk open); ${instead} once no one serves it`,
      );
    }
    return e;
  };

  const nbdHost: NbdHost = {
    address: () => ({ ...address }),
    uri: (name) => exportUri(address, name),
    exports: () => [...exports.values()].map((e) => e.info()),
    controlPath: () => control?.path,
    attach(disk) {
      if (closing) return Promise.reject(stopped());
      let name: string;
      try {
        name = exportNameOf(disk);
      } catch (err) {
        return Promise.reject(err);
      }
      const served = exports.get(name);
      if (served !== undefined || attaching.has(name)) {
        const what = served ? `is already served (${served.info().path})` : 'is being attached';
        return Promise.reject(new ServeError('ERR_SERVE_EXPORT', `export '${name}' ${what}: give ${disk.path} another export name`));
      }
      attaching.add(name);
      return track(
        (async () => {
          try {
            const exp = await openExport(disk, name, openContext);
            if (closing) {
              await exp.close().catch(() => undefined);
              throw stopped();
            }
            exports.set(name, exp);
            if (exp instanceof LockedExport) {
              exp.start();
              log(`export ${name} attached locked (${disk.path}): ${exp.reason}`);
            } else log(`export ${name} attached (${disk.path})`);
            return exp.info();
          } finally {
            attaching.delete(name);
          }
        })(),
      );
    },
    detach(name) {
      if (closing) return Promise.reject(stopped());
      const exp = typeof name === 'string' ? exports.get(name) : undefined;
      if (!exp) return Promise.reject(unknown(name));
      // Gone for new clients from here on; its connections answer what is in flight, then stop.
      exports.delete(name);
      // A locked export stops retrying now: no retry may open the disk of an export that is gone.
      const stopRetries = exp instanceof LockedExport ? exp.close() : undefined;
      return track(
        (async () => {
          const mine = [...connections].filter(([, e]) => e.export === exp);
          for (const [c] of mine) c.stop();
          await Promise.allSettled(mine.map(([c]) => c.done));
          for (const [, e] of mine) e.socket.destroy();
          await (stopRetries ?? exp.close());
          log(`export ${name} detached: flushed, closed, lock released`);
        })(),
      );
    },
    async unlock(name, keys) {
      if (typeof name !== 'string') throw new ServeError('ERR_INVALID_ARGUMENT', `Expected an export name for name but received ${describeValue(name)}`);
      if (keys === null || typeof keys !== 'object') {
        throw new ServeError('ERR_INVALID_ARGUMENT', `Expected an object { passphrase?, providers?, cache? } for keys but received ${describeValue(keys)}`);
      }
      if (closing) throw new ServeError('ERR_SERVE_CLOSED', `cannot unlock export ${name}: the host is stopping`);
      const e = exports.get(name);
      if (!e) throw unknown(name);
      if (!(e instanceof LockedExport)) throw new ServeError('ERR_SERVE_NOT_LOCKED', `export ${name} is not locked: its disk is open and served`);
      return (await e.unlock(keys)).info();
    },
    snapshot(name, snapOptions = {}) {
      if (snapOptions === null || typeof snapOptions !== 'object') {
        return Promise.reject(new ServeError('ERR_INVALID_ARGUMENT', `Expected an object { name? } for options but received ${describeValue(snapOptions)}`));
      }
      let e: Export;
      try {
        e = layeredExport(name, 'take a snapshot of', 'take it with vmseal snapshot create');
      } catch (err) {
        return Promise.reject(err);
      }
      return track(
        (async () => {
          const done = await snapshotExport(e, {
            ...(snapOptions.name !== undefined ? { name: snapOptions.name } : {}),
            keysFor: (path) => keysOf(options, path),
            log,
          });
          log(`export ${name}: snapshot taken: ${done.parent} frozen, serving ${done.top}`);
          return { ...e.info(), parent: done.parent };
        })(),
      );
    },
    commit(name) {
      let e: Export;
      try {
        e = layeredExport(name, 'commit the snapshot of', 'commit it with vmseal snapshot commit');
      } catch (err) {
        return Promise.reject(err);
      }
      return track(
        (async () => {
          const done = await commitExport(e, { keysFor: (path) => keysOf(options, path), log });
          log(`export ${name}: snapshot committed: ${done.removed} merged (writes held ${done.heldMs} ms), serving ${done.top}`);
          return { ...e.info(), removed: done.removed, bytesMoved: done.bytesMoved, heldMs: done.heldMs };
        })(),
      );
    },
    close() {
      closing ??= (async () => {
        const stopping = new Promise<void>((done) => server.close(() => done()));
        // No more control commands; the ones running (attach, detach) finish first (an attach that
        // ends now closes what it opened itself).
        const controlClosed = control?.close();
        // Locked exports stop at once (close() marks them before its first await): no retry or
        // unlock() opens a disk from here on. Their locks are released once an attempt in flight ends.
        const unlocking = [...exports.values()].filter((e) => e instanceof LockedExport).map((e) => e.close());
        await Promise.allSettled([...pending]);
        for (const c of connections.keys()) c.stop();
        await Promise.allSettled([...connections.keys()].map((c) => c.done));
        // Replies are answered or given up by now; a client that keeps its socket open is cut off.
        for (const s of sockets) s.destroy();
        await stopping;
        await controlClosed;
        if (socketPath !== undefined) await rm(socketPath, { force: true });
        const failures: unknown[] = [];
        for (const r of await Promise.allSettled(unlocking)) {
          if (r.status === 'rejected') {
            log(`releasing the lock of a locked export failed: ${(r.reason as Error).message}`);
            failures.push(r.reason);
          }
        }
        for (const e of exports.values()) {
          if (e instanceof LockedExport) continue; // closed above
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
  if (control) {
    try {
      await control.listen(nbdHost, log);
    } catch (err) {
      await nbdHost.close().catch(() => undefined);
      throw err;
    }
  }
  return nbdHost;
}

/** `nbd+unix:///NAME?socket=PATH` or `nbd://HOST:PORT/NAME` (IPv6 hosts in brackets). */
export function exportUri(address: ServeAddress, name: string): string {
  const n = encodeURIComponent(name);
  if (address.transport === 'unix') return `nbd+unix:///${n}?socket=${address.path}`;
  const h = isIP(address.host) === 6 ? `[${address.host}]` : address.host;
  return `nbd://${h}:${address.port}/${n}`;
}
