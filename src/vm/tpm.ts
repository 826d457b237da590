/**
 * The vTPM of a qemu VM folder: swtpm's state, encrypted at rest by swtpm itself (AES-256-CBC with
 * encrypt-then-MAC, swtpm's `--key`) under a random 32-byte state key. The state key is sealed in a
 * KeySafe under the VM's lockers and kept in the manifest (`tpm.keySafe`); vmseal opens it and hands
 * it to swtpm through file descriptor 3 — a pipe written and closed right after the spawn — never
 * through a file, argv or the environment. The first state (EK seeds included) is made by
 * swtpm_setup given the key the same way (`--keyfile-fd 3`, which it passes on to the one swtpm that
 * writes state as `--key fd=3`), in a folder beside the final one that is renamed into place only
 * when complete. docs/vm.md, "The vTPM", has the sequence and the qemu recipe.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readdir, rename, rm, rmdir, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import type { Writable } from 'node:stream';
import { dirname, join } from 'node:path';
import { expected } from '../errors.js';
import { rewrapKeySafe, sealDek, unlockKeySafe, wipe, type KeyCache, type LockerInfo, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { fsyncDir, isTempNameOf, tempName } from '../util/atomic-file.js';
import { readManifest, resolveInFolder, writeManifest, manifestPath } from './manifest.js';
import { VmError } from './errors.js';
import { initTpm, startupClear, stopTpm } from './tpm-control.js';
import { withParentDeathSignal } from './parent-death.js';

/** swtpm's file of the TPM 2.0 permanent state: its presence means the state exists. */
export const TPM_STATE_FILE = 'tpm2-00.permall';
export const TPM_STATE_CIPHER = 'aes-256-cbc';
const KEY_CIPHER = 'AES-256';
const KEY_BYTES = 32;
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;
/** Bytes of a child's output kept for error messages. */
const OUTPUT_TAIL = 8192;

export interface StartVmTpmOptions {
  /** How to open the state key's KeySafe (`tpm.keySafe` in the manifest). */
  keys: UnlockOptions;
  /** Lockers of a new state key, needed on the first start (when the manifest has no `tpm.keySafe`). */
  lockers?: LockerSpec[];
  /** KEKs fetched or created for `lockers` are kept here. */
  cache?: KeyCache;
  /** Folder of the sockets (default: a new private folder under $XDG_RUNTIME_DIR or the temp folder, removed at stop). */
  socketDir?: string;
  /**
   * Also listen on a data socket and start the TPM (TPM2_Startup CLEAR), for tpm2-tools
   * (TPM2TOOLS_TCTI=swtpm:path=…). Not for qemu, which starts the TPM itself.
   */
  tools?: boolean;
  /** The swtpm executable (default: `swtpm` in PATH). */
  swtpm?: string;
  /** The swtpm_setup executable (default: `swtpm_setup` in PATH). */
  swtpmSetup?: string;
  /** swtpm's and swtpm_setup's own messages, one line at a time. */
  log?: (line: string) => void;
}

export interface VmTpm {
  /** The state folder (swtpm's `--tpmstate dir=`). */
  readonly stateDir: string;
  /** swtpm's control socket: qemu's `-chardev socket,path=`. */
  readonly ctrlSocket: string;
  /** With `tools`: the data socket (TPM2TOOLS_TCTI=swtpm:path=<it>; the control socket is <it>.ctrl). */
  readonly dataSocket: string | undefined;
  /** True if this start made the first state (swtpm_setup). */
  readonly created: boolean;
  readonly pid: number;
  /** The qemu options that attach this vTPM. */
  readonly qemuArgs: string[];
  /** Resolves when swtpm exits (qemu shut the vTPM down, or stop()). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Stop swtpm (SIGTERM, then SIGKILL after 10 s) and remove the sockets. */
  stop(): Promise<void>;
}

function invalid(what: string, name: string, value: unknown): VmError {
  return new VmError('ERR_INVALID_ARGUMENT', expected(what, name, value));
}

/** swtpm splits its option values on ',' and '=': a path must contain neither, nor a space (swtpm_setup --tpm). */
function swtpmSafePath(path: string, what: string): string {
  if (/[,=\s]/.test(path)) {
    throw new VmError(
      'ERR_INVALID_ARGUMENT',
      `${what} ${JSON.stringify(path)} contains a comma, '=' or white space, which swtpm's options cannot carry: use another folder`,
    );
  }
  return path;
}

function tail(chunks: Buffer[]): string {
  const text = Buffer.concat(chunks).toString('utf8');
  return text.slice(-OUTPUT_TAIL).trim();
}

/** Forward a child's output to `log` line by line and keep its tail for error messages. */
function collect(child: ChildProcess, log: ((line: string) => void) | undefined, prefix: string): Buffer[] {
  const kept: Buffer[] = [];
  let size = 0;
  let partial = '';
  const onData = (d: Buffer): void => {
    kept.push(d);
    size += d.length;
    while (size > OUTPUT_TAIL * 2 && kept.length > 1) size -= kept.shift()!.length;
    if (log) {
      const lines = (partial + d.toString('utf8')).split('\n');
      partial = lines.pop() ?? '';
      for (const l of lines) if (l.trim() !== '') log(`${prefix}: ${l}`);
    }
  };
  child.stdout?.on('data', onData);
  child.stderr?.on('data', onData);
  return kept;
}

/** Hand the key to the child's fd 3 and close it at once: the key is in the pipe, nowhere else. */
function giveKey(child: ChildProcess, key: Buffer): void {
  const fd3 = child.stdio[3] as Writable;
  fd3.on('error', () => undefined); // a child that exits before reading: its exit is reported instead
  const copy = Buffer.from(key);
  fd3.end(copy, () => {
    copy.fill(0);
    fd3.destroy();
  });
}

const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');

/** The key as ASCII hex digits in a Buffer (wiped by the caller), never as a JS string that cannot be wiped. */
function hexOf(key: Buffer): Buffer {
  const out = Buffer.alloc(key.length * 2);
  for (let i = 0; i < key.length; i++) {
    out[2 * i] = HEX_DIGITS[key[i]! >> 4]!;
    out[2 * i + 1] = HEX_DIGITS[key[i]! & 0x0f]!;
  }
  return out;
}

function notInstalled(exe: string, err: unknown): VmError {
  return new VmError('ERR_VM_TPM', `cannot run ${exe}: ${(err as Error).message}; install swtpm and swtpm-tools (Debian: apt install swtpm swtpm-tools)`, {
    cause: err,
  });
}

/** Exit of a child as a promise; a spawn failure (not installed) rejects. */
function exitOf(child: ChildProcess, exe: string): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    child.once('error', (err) => reject(notInstalled(exe, err)));
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/**
 * Make the first state in a new folder beside `stateDir`, with swtpm_setup given the key in hex
 * through fd 3 (it passes `--key fd=3,mode=aes-256-cbc` to the swtpm that writes the state), then
 * rename it into place.
 */
async function createState(stateDir: string, key: Buffer, opts: StartVmTpmOptions): Promise<void> {
  const setupExe = opts.swtpmSetup ?? 'swtpm_setup';
  await mkdir(dirname(stateDir), { recursive: true, mode: 0o700 });
  // Folders a killed first start left beside the state: never read, removed before a new attempt.
  for (const name of await readdir(dirname(stateDir))) {
    if (isTempNameOf(stateDir, name)) await rm(join(dirname(stateDir), name), { recursive: true, force: true });
  }
  const tmp = tempName(stateDir);
  await mkdir(tmp, { mode: 0o700 });
  const hex = hexOf(key);
  try {
    const args = ['--tpm2', '--tpmstate', swtpmSafePath(tmp, 'the vTPM state folder'), '--createek', '--pcr-banks', 'sha256'];
    args.push('--cipher', TPM_STATE_CIPHER, '--keyfile-fd', '3', '--not-overwrite');
    if (opts.swtpm !== undefined) args.push('--tpm', `${swtpmSafePath(opts.swtpm, 'the swtpm executable')} socket`);
    const child = spawn(setupExe, args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    const output = collect(child, opts.log, 'swtpm_setup');
    const exit = exitOf(child, setupExe);
    giveKey(child, hex);
    const { code, signal } = await exit;
    if (code !== 0 || !existsSync(join(tmp, TPM_STATE_FILE))) {
      throw new VmError('ERR_VM_TPM', `swtpm_setup failed (${signal ?? `exit code ${code}`}) making the first vTPM state: ${tail(output) || 'no output'}`);
    }
    // swtpm_setup's swtpm writes mode 0640; the running swtpm writes 0600 (--tpmstate mode=0600).
    for (const f of await readdir(tmp)) await chmod(join(tmp, f), 0o600);
    if (existsSync(stateDir)) await rmdir(stateDir); // an empty folder the user made; a full one was refused before
    await rename(tmp, stateDir);
    await fsyncDir(dirname(stateDir));
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  } finally {
    hex.fill(0);
  }
}

/** The state key: opened from the manifest's KeySafe, or made, sealed and recorded on the first start. */
async function stateKey(dir: string, opts: StartVmTpmOptions, hasState: boolean): Promise<{ key: Buffer }> {
  const manifest = await readManifest(dir);
  const tpm = manifest.tpm!;
  const file = manifestPath(dir);
  if (tpm.keySafe !== undefined) {
    const opened = await unlockKeySafe(tpm.keySafe, opts.keys);
    if (opened.cipher !== KEY_CIPHER || opened.key.length !== KEY_BYTES) {
      wipe(opened.key);
      throw new VmError('ERR_VM_MANIFEST', `${file}: tpm.keySafe holds a ${opened.cipher} key, not the ${KEY_CIPHER} state key of a vTPM`, { file });
    }
    return { key: opened.key };
  }
  if (hasState) {
    throw new VmError(
      'ERR_VM_MANIFEST',
      `${file}: the vTPM state in ${tpm.state} exists but tpm.keySafe does not, so vmseal did not make it and it is not encrypted by vmseal; move the folder away (a new state is made) or restore the manifest that belongs to it`,
      { file },
    );
  }
  if (!opts.lockers || opts.lockers.length === 0) {
    throw new VmError('ERR_INVALID_ARGUMENT', `${file} has no tpm.keySafe yet: the first start needs lockers for a new state key`);
  }
  const key = randomBytes(KEY_BYTES);
  try {
    const keySafe = await sealDek(key, { cipher: KEY_CIPHER, lockers: opts.lockers, ...(opts.cache ? { cache: opts.cache } : {}) });
    // Recorded before the state is made: a crash in between leaves a key and no state, and the
    // next start makes the state with that key. The reverse order could leave a state no key opens.
    await writeManifest(dir, { ...manifest, tpm: { ...tpm, keySafe } });
    return { key };
  } catch (err) {
    wipe(key);
    throw err;
  }
}

async function defaultSocketDir(): Promise<string> {
  const runtime = process.env.XDG_RUNTIME_DIR;
  const base = runtime !== undefined && runtime !== '' && existsSync(runtime) ? runtime : tmpdir();
  return mkdtemp(join(base, 'vmseal-tpm-'));
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Start the vTPM of VM folder `dir` (making its first state if needed) and return when it is ready. */
export async function startVmTpm(dir: string, options: StartVmTpmOptions): Promise<VmTpm> {
  if (typeof dir !== 'string' || dir === '') throw invalid('a folder path', 'dir', dir);
  if (options === null || typeof options !== 'object' || options.keys === null || typeof options.keys !== 'object') {
    throw invalid('an object with keys', 'options', options);
  }
  const manifest = await readManifest(dir);
  if (!manifest.tpm) {
    throw new VmError('ERR_VM_MANIFEST', `${manifestPath(dir)} has no "tpm" entry: add "tpm": {"state": "tpm"} to give the VM a vTPM`, {
      file: manifestPath(dir),
    });
  }
  const stateDir = swtpmSafePath(resolveInFolder(dir, manifest.tpm.state), 'the vTPM state folder');
  const st = await stat(stateDir).catch(() => undefined);
  if (st && !st.isDirectory()) throw new VmError('ERR_VM_MANIFEST', `${manifestPath(dir)}: tpm.state ${manifest.tpm.state} is not a folder`);
  const hasState = existsSync(join(stateDir, TPM_STATE_FILE));
  if (st && !hasState && (await readdir(stateDir)).length > 0) {
    throw new VmError('ERR_VM_TPM', `${stateDir} holds files but no ${TPM_STATE_FILE}: not a vTPM state vmseal can use; empty it or name another folder`);
  }
  const { key } = await stateKey(dir, options, hasState);
  const ownSocketDir = options.socketDir === undefined;
  const socketDir = options.socketDir ?? (await defaultSocketDir());
  let child: ChildProcess | undefined;
  try {
    if (!ownSocketDir) await mkdir(socketDir, { recursive: true, mode: 0o700 });
    const tools = options.tools === true;
    // tpm2-tools' swtpm TCTI finds the control socket at "<data socket>.ctrl".
    const dataSocket = tools ? swtpmSafePath(join(socketDir, 'tpm.sock'), 'the socket folder') : undefined;
    const ctrlSocket = swtpmSafePath(tools ? `${dataSocket!}.ctrl` : join(socketDir, 'tpm.ctrl'), 'the socket folder');
    for (const s of [ctrlSocket, dataSocket]) if (s !== undefined) await unlink(s).catch(() => undefined);
    if (!hasState) await createState(stateDir, key, options);
    const exe = options.swtpm ?? 'swtpm';
    const args = ['socket', '--tpm2', '--tpmstate', `dir=${stateDir},mode=0600`, '--ctrl', `type=unixio,path=${ctrlSocket},mode=0600`];
    args.push('--key', `fd=3,format=binary,mode=${TPM_STATE_CIPHER}`);
    if (dataSocket !== undefined) args.push('--server', `type=unixio,path=${dataSocket},mode=0600`);
    // swtpm must not outlive this process: it holds the state open, and a second start would fail.
    const run = withParentDeathSignal(exe, args);
    const proc = spawn(run.command, run.args, { stdio: ['ignore', 'pipe', 'pipe', 'pipe'] });
    child = proc;
    const output = collect(proc, options.log, 'swtpm');
    const exited = exitOf(proc, exe);
    giveKey(proc, key);
    wipe(key);
    let gone: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let spawnError: unknown;
    exited.then(
      (e) => (gone = e),
      (err: unknown) => (spawnError = err),
    );
    // All of swtpm's output is in once its stdio closed: the reason of a failure is read after that.
    const closed = new Promise<void>((r) => proc.once('close', () => r()));
    const fail = async (why: string): Promise<VmError> => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([closed, new Promise((r) => (timer = setTimeout(r, STOP_TIMEOUT_MS)))]);
      clearTimeout(timer);
      const text = tail(output);
      if (/HMAC|GetDecryptedData/.test(text)) {
        return new VmError(
          'ERR_VM_TPM_KEY',
          `the vTPM state in ${stateDir} does not open with the state key in ${manifestPath(dir)} (swtpm ${why}: its integrity check failed); the manifest and the state do not belong together, or the state is damaged`,
        );
      }
      if (/Could not lock/.test(text)) {
        return new VmError('ERR_VM_TPM', `the vTPM state in ${stateDir} is in use by another swtpm (another \`vmseal vm tpm\` of this VM?): ${text}`);
      }
      return new VmError('ERR_VM_TPM', `swtpm ${why}: ${text || 'no output'}`);
    };
    // Ready when the control socket answers CMD_INIT; swtpm loads (decrypts, checks) the state then.
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let result: number | undefined;
    while (result === undefined) {
      await Promise.race([exited.catch(() => undefined), sleep(50)]);
      if (spawnError !== undefined) throw spawnError;
      if (gone) throw await fail(`exited (${gone.signal ?? `exit code ${gone.code}`}) before it was ready`);
      try {
        if (existsSync(ctrlSocket)) result = await initTpm(ctrlSocket);
      } catch {
        // not listening yet
      }
      if (result === undefined && Date.now() > deadline) throw await fail(`did not open its control socket ${ctrlSocket} within ${READY_TIMEOUT_MS / 1000} s`);
    }
    if (result !== 0) throw await fail(`answered CMD_INIT with TPM result 0x${result.toString(16)}`);
    if (dataSocket !== undefined) {
      const rc = await startupClear(dataSocket);
      if (rc !== 0) throw await fail(`answered TPM2_Startup with 0x${rc.toString(16)}`);
    } else {
      const rc = await stopTpm(ctrlSocket);
      if (rc !== 0) throw await fail(`answered CMD_STOP with 0x${rc.toString(16)}`);
    }
    let stopping: Promise<void> | undefined;
    const stop = (): Promise<void> =>
      (stopping ??= (async () => {
        if (!gone) {
          proc.kill('SIGTERM');
          const killer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
          await exited.catch(() => undefined);
          clearTimeout(killer);
        }
        for (const s of [ctrlSocket, dataSocket]) if (s !== undefined) await unlink(s).catch(() => undefined);
        if (ownSocketDir) await rm(socketDir, { recursive: true, force: true });
      })());
    return {
      stateDir,
      ctrlSocket,
      dataSocket,
      created: !hasState,
      pid: proc.pid!,
      qemuArgs: qemuTpmArgs(ctrlSocket),
      exited,
      stop,
    };
  } catch (err) {
    wipe(key);
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
    }
    for (const name of ['tpm.ctrl', 'tpm.sock', 'tpm.sock.ctrl']) await unlink(join(socketDir, name)).catch(() => undefined);
    if (ownSocketDir) await rm(socketDir, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

export interface RewrapVmTpmKeyOptions {
  /** Opens the current `tpm.keySafe`. */
  keys: UnlockOptions;
  add?: LockerSpec[];
  remove?: (locker: LockerInfo) => boolean;
  cache?: KeyCache;
}

/**
 * Shallow rekey of the vTPM: the same state key under a changed set of lockers, written to the
 * manifest atomically. The state files are not touched — and the state key is not rotated (swtpm
 * cannot re-encrypt its state under a new key in place), so an old copy of the manifest with an old
 * locker still opens the state; see docs/vm.md.
 */
export async function rewrapVmTpmKey(dir: string, options: RewrapVmTpmKeyOptions): Promise<void> {
  if (options === null || typeof options !== 'object' || options.keys === null || typeof options.keys !== 'object') {
    throw invalid('an object with keys', 'options', options);
  }
  const manifest = await readManifest(dir);
  if (manifest.tpm?.keySafe === undefined) {
    throw new VmError('ERR_VM_MANIFEST', `${manifestPath(dir)} has no tpm.keySafe: the vTPM was never started, so it has no state key to rewrap`, {
      file: manifestPath(dir),
    });
  }
  const keySafe = await rewrapKeySafe(manifest.tpm.keySafe, {
    unlock: options.keys,
    ...(options.add ? { add: options.add } : {}),
    ...(options.remove ? { remove: options.remove } : {}),
    ...(options.cache ? { cache: options.cache } : {}),
  });
  await writeManifest(dir, { ...manifest, tpm: { ...manifest.tpm, keySafe } });
}

/** The qemu options of a vTPM whose control socket is `ctrlSocket` (for docs and the CLI). */
export function qemuTpmArgs(ctrlSocket: string): string[] {
  return ['-chardev', `socket,id=chrtpm,path=${ctrlSocket}`, '-tpmdev', 'emulator,id=tpm0,chardev=chrtpm', '-device', 'tpm-tis,tpmdev=tpm0'];
}
