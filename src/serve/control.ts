/**
 * The control socket of a running host (`vmseal host …` talks to it): a Unix socket, mode 0600 in a
 * private folder, speaking the JSON lines of control-protocol.ts. Commands run one at a time per
 * connection (the socket is not read while one runs), so a client holds at most one request line
 * and one command's work.
 *
 * The socket path is guarded by the lock primitive (src/util/lock.ts) on `<path>.vmseal-lock`: a
 * second server given the same path is refused and never removes the first one's socket; a socket
 * file left by a server that died (SIGKILL) has no lock holder and is taken over.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { chmod, lstat, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { VmsealError, describeChoice, describeValue } from '../errors.js';
import { acquireFileLock, FileLockError, lockRecordPathFor, type FileLockHandle } from '../util/lock.js';
import { ServeError } from './errors.js';
import type { NbdHost } from './host.js';
import { CONTROL_COMMANDS, LineSplitter, MAX_REQUEST_BYTES, type ControlId, type ControlReply, type ControlRequest } from './control-protocol.js';
import { privateFolder } from './private-folder.js';

/** What the control socket drives. */
export type ControlTarget = Pick<NbdHost, 'address' | 'uri' | 'exports' | 'attach' | 'detach' | 'unlock' | 'snapshot' | 'commit'>;

/** Control connections at once; more are answered with an error and closed. */
const MAX_CONTROL_CONNECTIONS = 16;

/** `$XDG_RUNTIME_DIR/vmseal/serve.sock`, else `<home>/serve.sock` (home: the keystore folder, VMSEAL_HOME). */
export function defaultControlPath(home: string, env: NodeJS.ProcessEnv = process.env): string {
  const runtime = env.XDG_RUNTIME_DIR;
  return runtime ? join(runtime, 'vmseal', 'serve.sock') : join(home, 'serve.sock');
}

export interface ControlSocket {
  readonly path: string;
  /** Listen and serve commands on `target` until close(). */
  listen(target: ControlTarget, log: (line: string) => void): Promise<void>;
  /** Stop listening, cut off control clients, remove the socket, release the lock. */
  close(): Promise<void>;
}

/**
 * Take the control path: make its private folder, take its lock, remove a stale socket. Throws
 * ERR_SERVE_CONTROL when another server holds it or the folder is not private.
 */
export async function claimControl(path: string): Promise<ControlSocket> {
  if (typeof path !== 'string' || path.length === 0) {
    throw new ServeError('ERR_INVALID_ARGUMENT', `Expected a socket path for control but received ${describeValue(path)}`);
  }
  const socketPath = resolve(path);
  await privateFolder(dirname(socketPath), 'control socket', 'ERR_SERVE_CONTROL');
  let lock: FileLockHandle;
  try {
    lock = await acquireFileLock(lockRecordPathFor(socketPath), { mode: 'exclusive', record: { operation: 'serve (control socket)', tool: 'vmseal' } });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new ServeError('ERR_SERVE_CONTROL', `the control socket ${socketPath} is ${err.message}: another vmseal serve uses it`, { cause: err });
    }
    throw err;
  }
  try {
    const st = await lstat(socketPath).catch(() => undefined);
    if (st && !st.isSocket()) {
      throw new ServeError('ERR_SERVE_CONTROL', `cannot use ${socketPath} as the control socket: a file that is not a socket is there`);
    }
    // We hold the lock, so a socket here was left by a server that died: take it over.
    if (st) await rm(socketPath, { force: true });
  } catch (err) {
    lock.release();
    throw err;
  }
  return new ControlServer(socketPath, lock);
}

class ControlServer implements ControlSocket {
  readonly path: string;
  readonly #lock: FileLockHandle;
  #server: Server | undefined;
  readonly #clients = new Set<Socket>();
  #closing: Promise<void> | undefined;

  constructor(path: string, lock: FileLockHandle) {
    this.path = path;
    this.#lock = lock;
  }

  async listen(target: ControlTarget, log: (line: string) => void): Promise<void> {
    const server = createServer((socket) => {
      if (this.#closing || this.#clients.size >= MAX_CONTROL_CONNECTIONS) {
        const refusal = this.#closing
          ? new ServeError('ERR_SERVE_CLOSED', 'control connection refused: the server is stopping')
          : new ServeError('ERR_SERVE_REQUEST', `control connection refused: more than ${MAX_CONTROL_CONNECTIONS} control connections at once`);
        // Dropped once the reply is out: nothing reads this socket, so its end would never be seen.
        socket.on('error', () => undefined);
        socket.end(reply(null, refusal), () => socket.destroy());
        return;
      }
      this.#clients.add(socket);
      socket.once('close', () => this.#clients.delete(socket));
      serveClient(socket, target, log);
    });
    this.#server = server;
    await new Promise<void>((done, fail) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        fail(new ServeError('ERR_SERVE_CONTROL', `cannot listen on the control socket ${this.path} (${err.code ?? err.message})`, { cause: err })),
      );
      server.listen(this.path, () => done());
    });
    server.on('error', (err: NodeJS.ErrnoException) => log(`control socket error: ${err.code ?? err.message}`));
    await chmod(this.path, 0o600);
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      const server = this.#server;
      if (server?.listening) {
        const stopped = new Promise<void>((done) => server.close(() => done()));
        for (const s of this.#clients) s.destroy();
        await stopped;
      }
      // Removed while the lock is held: a new server that takes the lock after us keeps its socket.
      await rm(this.path, { force: true });
      this.#lock.release();
    })();
    return this.#closing;
  }
}

/** One control client: read request lines one at a time, answer each in order. */
function serveClient(socket: Socket, target: ControlTarget, log: (line: string) => void): void {
  const splitter = new LineSplitter(MAX_REQUEST_BYTES, 'ERR_SERVE_REQUEST', 'control request');
  const queue: string[] = [];
  let running = false;
  /** The client ended its side, or was refused: close ours once the queue is answered. */
  let ended = false;
  const pump = async (): Promise<void> => {
    if (running) return;
    running = true;
    // Not read while a command runs: a client cannot pile up requests in our memory.
    socket.pause();
    try {
      for (let line = queue.shift(); line !== undefined; line = queue.shift()) {
        if (line.trim().length === 0) continue;
        const out = await answer(line, target, log);
        if (!socket.destroyed) socket.write(out);
      }
    } finally {
      running = false;
      if (ended) socket.end();
      else socket.resume();
    }
  };
  socket.on('data', (chunk: Buffer) => {
    if (ended) return;
    try {
      queue.push(...splitter.push(chunk));
    } catch (err) {
      // A line past the bound: answered, then the connection is dropped (nothing more is read).
      ended = true;
      queue.length = 0;
      socket.end(reply(null, err), () => socket.destroy());
      return;
    }
    void pump();
  });
  socket.on('end', () => {
    ended = true;
    if (!running) socket.end();
  });
  socket.on('error', () => undefined);
}

/** Parse and run one request line; the reply line. Never throws. */
async function answer(line: string, target: ControlTarget, log: (line: string) => void): Promise<string> {
  let id: ControlId = null;
  let request: ControlRequest;
  try {
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new ServeError('ERR_SERVE_REQUEST', 'a control request is not JSON: send one JSON object per line');
    }
    if (value !== null && typeof value === 'object' && 'id' in value) id = checkId(value.id);
    request = parseRequest(value);
  } catch (err) {
    return reply(id, err);
  }
  try {
    const result = await run(request, target);
    log(`control: ${describe(request)}: done`);
    return reply(id, undefined, result);
  } catch (err) {
    const code = err instanceof VmsealError || typeof (err as NodeJS.ErrnoException)?.code === 'string' ? (err as { code: string }).code : 'ERR_SERVE_INTERNAL';
    log(`control: ${describe(request)}: failed (${code}): ${(err as Error)?.message ?? String(err)}`);
    return reply(id, err);
  }
}

/** What a request does, for the log: never its passphrase. */
function describe(request: ControlRequest): string {
  switch (request.command) {
    case 'status':
      return 'status';
    case 'attach':
      return `attach ${request.path}${request.name !== undefined ? ` as ${request.name}` : ''}`;
    case 'detach':
    case 'unlock':
    case 'commit':
      return `${request.command} ${request.name}`;
    case 'snapshot':
      return `snapshot ${request.name}${request.snapshotName !== undefined ? ` as ${request.snapshotName}` : ''}`;
  }
}

async function run(request: ControlRequest, target: ControlTarget): Promise<unknown> {
  const withUri = <T extends { name: string }>(info: T): T & { uri: string } => ({ ...info, uri: target.uri(info.name) });
  switch (request.command) {
    case 'status':
      return { address: target.address(), exports: target.exports().map(withUri) };
    case 'attach': {
      const { path, name, readOnly, shared } = request;
      return withUri(
        await target.attach({
          path,
          ...(name !== undefined ? { name } : {}),
          ...(readOnly !== undefined ? { readOnly } : {}),
          ...(shared !== undefined ? { shared } : {}),
        }),
      );
    }
    case 'detach':
      await target.detach(request.name);
      return { name: request.name };
    case 'unlock':
      return withUri(await target.unlock(request.name, { passphrase: request.passphrase }));
    case 'snapshot':
      return withUri(await target.snapshot(request.name, request.snapshotName !== undefined ? { name: request.snapshotName } : {}));
    case 'commit':
      return withUri(await target.commit(request.name));
  }
}

function checkId(id: unknown): ControlId {
  if (id === null || typeof id === 'string' || (typeof id === 'number' && Number.isFinite(id))) return id;
  throw new ServeError('ERR_SERVE_REQUEST', `Expected a string, a number or null for id but received ${describeValue(id)}`);
}

function parseRequest(value: unknown): ControlRequest {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ServeError('ERR_SERVE_REQUEST', `Expected a JSON object for a control request but received ${describeValue(value)}`);
  }
  const r = value as Record<string, unknown>;
  const field = <T>(key: string, ok: (v: unknown) => v is T, what: string, required: boolean): T | undefined => {
    const v = r[key];
    if (v === undefined && !required) return undefined;
    if (!ok(v)) throw new ServeError('ERR_SERVE_REQUEST', `Expected ${what} for ${key} of ${String(r.command)} but received ${describeValue(v)}`);
    return v;
  };
  const text = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
  const bool = (v: unknown): v is boolean => typeof v === 'boolean';
  const count = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 1;
  switch (r.command) {
    case 'status':
      return { command: 'status' };
    case 'attach': {
      const name = field('name', text, 'a non-empty string', false);
      const readOnly = field('readOnly', bool, 'a boolean', false);
      const shared = field('shared', count, 'a positive integer', false);
      return {
        command: 'attach',
        path: field('path', text, 'a non-empty string (the disk, an absolute path)', true)!,
        ...(name !== undefined ? { name } : {}),
        ...(readOnly !== undefined ? { readOnly } : {}),
        ...(shared !== undefined ? { shared } : {}),
      };
    }
    case 'detach':
      return { command: 'detach', name: field('name', text, 'a non-empty string', true)! };
    case 'unlock':
      return {
        command: 'unlock',
        name: field('name', text, 'a non-empty string', true)!,
        passphrase: field('passphrase', text, 'a non-empty string', true)!,
      };
    case 'snapshot': {
      const snapshotName = field('snapshotName', text, 'a non-empty string (a file name)', false);
      return { command: 'snapshot', name: field('name', text, 'a non-empty string', true)!, ...(snapshotName !== undefined ? { snapshotName } : {}) };
    }
    case 'commit':
      return { command: 'commit', name: field('name', text, 'a non-empty string', true)! };
    default:
      throw new ServeError('ERR_SERVE_REQUEST', `unknown control command ${describeChoice(r.command)}: send one of ${CONTROL_COMMANDS.join(', ')}`);
  }
}

/** One reply line: the result, or the error's code and message (no stack, nothing secret). */
function reply(id: ControlId, err: unknown, result?: unknown): string {
  let body: ControlReply;
  if (err === undefined) body = { id, ok: true, result: result ?? null };
  else {
    const e = err as NodeJS.ErrnoException;
    const known = err instanceof VmsealError || (err instanceof Error && typeof e.code === 'string');
    body = {
      id,
      ok: false,
      error: known
        ? { code: e.code as string, message: e.message }
        : { code: 'ERR_SERVE_INTERNAL', message: 'the server failed unexpectedly (its log has the details)' },
    };
  }
  return JSON.stringify(body) + '\n';
}
