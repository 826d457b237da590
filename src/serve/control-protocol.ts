/**
 * The wire format of the control socket (docs/serve.md, "Control socket"): UTF-8 JSON lines. The
 * client sends one request object per line and gets one reply object per line, in order:
 *
 *   {"id": 1, "command": "status"}
 *   {"id": 2, "command": "attach", "path": "/vm/web.vmdk", "name": "web", "readOnly": false}
 *   {"id": 3, "command": "detach", "name": "web"}
 *   {"id": 4, "command": "unlock", "name": "web", "passphrase": "…"}
 *   {"id": 5, "command": "snapshot", "name": "web", "snapshotName": "web-before-upgrade.vmdk"}
 *   {"id": 6, "command": "commit", "name": "web"}
 *
 *   {"id": 1, "ok": true, "result": {…}}
 *   {"id": 2, "ok": false, "error": {"code": "ERR_DISK_BUSY", "message": "…"}}
 *
 * `id` (a string, a number or null; optional) is echoed back. A line longer than
 * MAX_REQUEST_BYTES is answered with ERR_SERVE_REQUEST (id null) and the connection is closed:
 * the server never buffers more than that for one client.
 */
import { ServeError, type ServeErrorCode } from './errors.js';

/** Longest request line: room for a path and a passphrase, far less than any memory concern. */
export const MAX_REQUEST_BYTES = 64 * 1024;
/** Longest reply line a client reads (a status of many exports). */
export const MAX_REPLY_BYTES = 16 * 1024 * 1024;

export type ControlCommand = 'status' | 'attach' | 'detach' | 'unlock' | 'snapshot' | 'commit';
export const CONTROL_COMMANDS: readonly ControlCommand[] = ['status', 'attach', 'detach', 'unlock', 'snapshot', 'commit'];

export type ControlId = string | number | null;

export type ControlRequest =
  | { id?: ControlId; command: 'status' }
  | { id?: ControlId; command: 'attach'; path: string; name?: string; readOnly?: boolean; shared?: number }
  | { id?: ControlId; command: 'detach'; name: string }
  | { id?: ControlId; command: 'unlock'; name: string; passphrase: string }
  /** `snapshotName`: the child's file name (default `<base>-00000N.vmdk`). */
  | { id?: ControlId; command: 'snapshot'; name: string; snapshotName?: string }
  /** Merge the top layer of the served chain into its parent, live. */
  | { id?: ControlId; command: 'commit'; name: string };

/** `code`: a vmseal error code, a Node system error code (ENOENT …), or ERR_SERVE_INTERNAL (the server logs it). */
export interface ControlErrorBody {
  code: string;
  message: string;
}

export type ControlReply = { id: ControlId; ok: true; result: unknown } | { id: ControlId; ok: false; error: ControlErrorBody };

/**
 * Splits a byte stream into lines of at most `max` bytes (without the newline). `push` returns
 * the complete lines, or throws ServeError `code` as soon as the line being read is longer than
 * `max`: what is buffered never exceeds `max` bytes.
 */
export class LineSplitter {
  readonly #max: number;
  readonly #code: ServeErrorCode;
  readonly #what: string;
  #partial: Buffer[] = [];
  #partialBytes = 0;

  constructor(max: number, code: ServeErrorCode, what: string) {
    this.#max = max;
    this.#code = code;
    this.#what = what;
  }

  push(chunk: Buffer): string[] {
    const lines: string[] = [];
    let at = 0;
    for (;;) {
      const nl = chunk.indexOf(0x0a, at);
      const end = nl === -1 ? chunk.length : nl;
      this.#partialBytes += end - at;
      if (this.#partialBytes > this.#max) {
        this.#partial = [];
        throw new ServeError(this.#code, `a ${this.#what} line is longer than ${this.#max} bytes`);
      }
      // A copy: a slice would keep the whole chunk (and the pool it came from) alive.
      if (end > at) this.#partial.push(Buffer.from(chunk.subarray(at, end)));
      if (nl === -1) return lines;
      lines.push(Buffer.concat(this.#partial).toString('utf8'));
      this.#partial = [];
      this.#partialBytes = 0;
      at = nl + 1;
    }
  }

  /** Bytes of an unfinished line. */
  get buffered(): number {
    return this.#partialBytes;
  }
}
