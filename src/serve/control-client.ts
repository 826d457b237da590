/**
 * The client side of the control socket (what `vmseal host …` runs): one request, one reply, over a
 * fresh connection. A reply's error comes back as an error of the same code and message, so that
 * callers (and the CLI's exit codes) see what the server saw: ERR_DISK_BUSY, ERR_WRONG_KEY, …
 */
import { createConnection } from 'node:net';
import { VmsealError } from '../errors.js';
import { ServeError } from './errors.js';
import { LineSplitter, MAX_REPLY_BYTES, type ControlReply, type ControlRequest } from './control-protocol.js';

/** Send `request` to the server whose control socket is `path`; resolves with its result. */
export function controlRequest(path: string, request: ControlRequest, options: { signal?: AbortSignal } = {}): Promise<unknown> {
  return new Promise((resolveReply, reject) => {
    const socket = createConnection(path);
    const splitter = new LineSplitter(MAX_REPLY_BYTES, 'ERR_SERVE_NO_SERVER', 'control reply');
    let settled = false;
    const finish = (err: unknown, result?: unknown): void => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      if (err !== undefined) reject(err);
      else resolveReply(result);
    };
    const onAbort = (): void => {
      const err = new Error('interrupted while waiting for the server');
      err.name = 'AbortError';
      finish(err);
    };
    if (options.signal?.aborted) return onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    let connected = false;
    socket.once('connect', () => {
      connected = true;
      socket.write(JSON.stringify({ id: 1, ...request }) + '\n');
    });
    socket.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = splitter.push(chunk);
      } catch (err) {
        return finish(err);
      }
      if (lines.length > 0) finish(...settle(lines[0]!));
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const why = connected
        ? `the control connection failed (${err.code ?? err.message})`
        : `nothing answers on the control socket ${path} (${err.code ?? err.message})`;
      finish(new ServeError('ERR_SERVE_NO_SERVER', why, { cause: err }));
    });
    socket.on('close', () => finish(new ServeError('ERR_SERVE_NO_SERVER', `the server closed the control socket ${path} without answering`)));
  });
}

/** A reply line as [error] or [undefined, result]. */
function settle(line: string): [unknown, unknown?] {
  let reply: ControlReply;
  try {
    reply = JSON.parse(line) as ControlReply;
  } catch {
    return [new ServeError('ERR_SERVE_NO_SERVER', 'the control socket answered something that is not JSON: is it a vmseal serve control socket?')];
  }
  if (reply !== null && typeof reply === 'object' && reply.ok === true) return [undefined, reply.result];
  const code = typeof reply?.error?.code === 'string' ? reply.error.code : 'ERR_SERVE_INTERNAL';
  const message = typeof reply?.error?.message === 'string' ? reply.error.message : 'the server failed without saying why';
  if (code.startsWith('ERR_')) return [new VmsealError(code, message)];
  // A Node system error on the server (ENOENT of a disk path …): same code, same message.
  return [Object.assign(new Error(message), { code })];
}
