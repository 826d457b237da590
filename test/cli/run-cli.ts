// Helpers of the CLI end-to-end tests: run `node bin/vmseal.js …` as a user would, make images
// with qemu-img, hash disk content independently of vmseal.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileP = promisify(execFile);

export const BIN = fileURLToPath(new URL('../../bin/vmseal.js', import.meta.url));

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * The environment of a test run: nothing of the caller's VMSEAL_* settings leaks in except
 * VMSEAL_CLI_ENTRY (a local build of the CLI, for development runs) and VMSEAL_NATIVE_PATH.
 */
export function cleanEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (k.startsWith('VMSEAL_') && k !== 'VMSEAL_CLI_ENTRY' && k !== 'VMSEAL_NATIVE_PATH') continue;
    env[k] = v;
  }
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/**
 * Run the CLI to completion; stdin is /dev/null (never a terminal). `nodeArgs` go to node before
 * the CLI's script (`--require PRELOAD`, V8 flags).
 */
export function vmseal(args: string[], env: NodeJS.ProcessEnv, opts: { timeoutMs?: number; nodeArgs?: string[] } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += String(d)));
    child.stderr.on('data', (d) => (stderr += String(d)));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 90_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Spawn the CLI without waiting (for the Ctrl-C test). */
export function vmsealChild(args: string[], env: NodeJS.ProcessEnv) {
  return spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The one JSON object a --json run printed. */
export function json(r: CliResult): Record<string, any> {
  const lines = r.stdout.trim().split('\n');
  if (lines.length !== 1) throw new Error(`expected one line of JSON on stdout, got ${lines.length}: ${r.stdout}\nstderr: ${r.stderr}`);
  return JSON.parse(lines[0]!);
}

export async function qemuImg(args: string[]): Promise<string> {
  const { stdout } = await execFileP('qemu-img', args, { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

export async function qemuVirtualSize(path: string): Promise<number> {
  return JSON.parse(await qemuImg(['info', '--output=json', path]))['virtual-size'];
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (let pos = 0; ;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return hash.digest('hex');
}

/** SHA-256 of a plain image's virtual disk, read by qemu-img (independent of vmseal). */
export async function qemuContentHash(path: string, scratch: string): Promise<string> {
  await qemuImg(['convert', '-O', 'raw', path, scratch]);
  return sha256File(scratch);
}

/** Every error line is one line starting "vmseal: " and ending with a period; no stack trace. */
export function expectOneLineError(r: CliResult): string {
  const lines = r.stderr.trim().split('\n');
  if (lines.length !== 1 || !lines[0]!.startsWith('vmseal: ') || !lines[0]!.endsWith('.') || /\n\s+at /.test(r.stderr)) {
    throw new Error(`expected one error line, got:\n${r.stderr}`);
  }
  return lines[0]!;
}

const PTY_DRIVER = fileURLToPath(new URL('./pty-driver.py', import.meta.url));
// Debian's python3 (any python3 ≥ 3.9 with the pty module would do).
const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

/** Run the CLI in a pseudo-terminal, typing `steps[i][1]` when `steps[i][0]` appears. */
export function vmsealOnTty(
  args: string[],
  env: NodeJS.ProcessEnv,
  steps: Array<[string, string]>,
): Promise<{ code: number; transcript: string; unanswered: string[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PYTHON, [PTY_DRIVER], { stdio: ['pipe', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += String(d)));
    child.on('error', reject);
    child.on('close', () => {
      try {
        resolve(JSON.parse(out));
      } catch {
        reject(new Error(`pty driver printed: ${out}`));
      }
    });
    child.stdin.end(JSON.stringify({ argv: [process.execPath, BIN, ...args], env, steps, timeout: 60 }));
  });
}
