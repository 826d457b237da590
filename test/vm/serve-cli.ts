// `vmseal serve` as a child process for the VM tests: started, waited for until it announced every
// export and its control socket (the last line it prints before serving), stopped with SIGTERM.
import type { ChildProcess } from 'node:child_process';
import { vmsealChild } from '../cli/run-cli.js';

/** How long the tests wait for the server to be ready (a loaded CI machine, a KMS that times out). */
const READY_TIMEOUT_MS = 60_000;

export interface ServeChild {
  child: ChildProcess;
  /** Export name → the rest of its "serving NAME on URI[ (locked: …)]" line. */
  exports: Map<string, { uri: string; locked: boolean }>;
  stderr: () => string;
}

/** Start `vmseal serve ARGS…` and resolve once it printed its control-socket line. */
export function startServeCli(args: string[], env: NodeJS.ProcessEnv): Promise<ServeChild> {
  return new Promise((resolve, reject) => {
    const child = vmsealChild(['serve', ...args], env);
    let stderr = '';
    let settled = false;
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`vmseal serve ${why}\nstderr: ${stderr}`));
    };
    const timer = setTimeout(() => fail(`was not ready within ${READY_TIMEOUT_MS} ms`), READY_TIMEOUT_MS);
    child.stdout!.resume();
    child.stderr!.on('data', (d) => {
      stderr += String(d);
      if (settled || !/^vmseal: control socket /m.test(stderr)) return;
      settled = true;
      clearTimeout(timer);
      const exports = new Map<string, { uri: string; locked: boolean }>();
      for (const m of stderr.matchAll(/^vmseal: serving (\S+) on (\S+)( \(locked: .*\))?$/gm)) exports.set(m[1]!, { uri: m[2]!, locked: m[3] !== undefined });
      resolve({ child, exports, stderr: () => stderr });
    });
    child.on('exit', (code, signal) => fail(`exited (${code ?? signal}) before it was ready`));
  });
}

/** Wait for the child's exit; SIGKILL it after `timeoutMs`. */
export function exitOf(child: ChildProcess, timeoutMs = 60_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve({ code: child.exitCode, signal: child.signalCode });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
}

/** SIGTERM (a clean stop: every export flushed) and the exit status. */
export async function stopServe(s: ServeChild): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGTERM');
  return exitOf(s.child);
}
