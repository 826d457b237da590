/**
 * The few messages vmseal sends swtpm itself, to know that the state opened before it tells qemu
 * to connect. swtpm's control channel (swtpm's tpm_ioctl.h, over a Unix socket) takes a 4-byte
 * big-endian command code and its payload, and answers with a 4-byte big-endian TPM result first:
 *
 *   CMD_INIT (2)  payload u32 flags (0)   → u32 result     loads the state: fails if the key does not open it
 *   CMD_STOP (14) no payload              → u32 result     back to "not initialized", as qemu expects to find it
 *
 * and its data channel takes TPM 2.0 commands; TPM2_Startup(SU_CLEAR) is
 * 80 01 | 00 00 00 0c | 00 00 01 44 | 00 00 (tag NO_SESSIONS, size 12, TPM_CC_Startup, SU_CLEAR),
 * answered by a 10-byte header whose last 4 bytes are the response code.
 */
import { connect, type Socket } from 'node:net';
import { VmError } from './errors.js';

export const CMD_INIT = 2;
export const CMD_STOP = 14;
const TPM2_STARTUP_CLEAR = Buffer.from([0x80, 0x01, 0, 0, 0, 0x0c, 0, 0, 0x01, 0x44, 0, 0]);
const TIMEOUT_MS = 30_000;

function exchange(path: string, request: Buffer, replyBytes: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock: Socket = connect(path);
    const parts: Buffer[] = [];
    let got = 0;
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new VmError('ERR_VM_TPM', `swtpm did not answer on ${path} within ${TIMEOUT_MS / 1000} s`));
    }, TIMEOUT_MS);
    sock.on('connect', () => sock.write(request));
    sock.on('data', (d: Buffer) => {
      parts.push(d);
      got += d.length;
      if (got >= replyBytes) {
        clearTimeout(timer);
        // Close now, not with end(): swtpm serves one client per channel, and end()'s shutdown is only
        // issued on a later turn of the event loop — a caller that blocks it (a synchronous child
        // process talking to the same swtpm) would wait behind this connection forever.
        sock.destroy();
        resolve(Buffer.concat(parts).subarray(0, replyBytes));
      }
    });
    sock.on('error', (err) => {
      clearTimeout(timer);
      reject(new VmError('ERR_VM_TPM', `cannot talk to swtpm on ${path}: ${err.message}`, { cause: err }));
    });
    sock.on('close', () => {
      clearTimeout(timer);
      if (got < replyBytes) reject(new VmError('ERR_VM_TPM', `swtpm closed ${path} after ${got} of ${replyBytes} reply bytes`));
    });
  });
}

/** Send one control command; returns swtpm's TPM result (0 = success). */
export async function controlCommand(ctrlPath: string, command: number, payload: Buffer = Buffer.alloc(0)): Promise<number> {
  const req = Buffer.alloc(4 + payload.length);
  req.writeUInt32BE(command, 0);
  payload.copy(req, 4);
  return (await exchange(ctrlPath, req, 4)).readUInt32BE(0);
}

/** CMD_INIT with no flags: the TPM loads (decrypts and checks) its state. */
export function initTpm(ctrlPath: string): Promise<number> {
  return controlCommand(ctrlPath, CMD_INIT, Buffer.alloc(4));
}

/** CMD_STOP: the TPM is left uninitialized, for qemu's own CMD_INIT. */
export function stopTpm(ctrlPath: string): Promise<number> {
  return controlCommand(ctrlPath, CMD_STOP);
}

/** TPM2_Startup(SU_CLEAR) on the data channel; returns the TPM response code. */
export async function startupClear(dataPath: string): Promise<number> {
  return (await exchange(dataPath, TPM2_STARTUP_CLEAR, 10)).readUInt32BE(6);
}
