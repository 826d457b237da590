/**
 * A child that must not outlive vmseal (swtpm holding a VM's vTPM state open): started through
 * util-linux's `setpriv --pdeathsig TERM`, which sets the kernel's parent-death signal
 * (prctl PR_SET_PDEATHSIG) and then execs the program in the same process. When vmseal ends in any
 * way — SIGKILL included, which no handler of vmseal's can catch — the kernel sends the child
 * SIGTERM. swtpm has no such option itself (`--terminate` is about its data connection).
 *
 * Without setpriv, or when the program is not found (so that spawning it reports ENOENT as before),
 * the program is started directly, and a killed vmseal leaves it running (docs/vm.md says so).
 */
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The path of `exe` (a bare name is looked up in PATH), or undefined when it is not an executable. */
function which(exe: string, env: NodeJS.ProcessEnv): string | undefined {
  const candidates = exe.includes('/')
    ? [exe]
    : (env.PATH ?? '')
        .split(delimiter)
        .filter((d) => d !== '')
        .map((d) => join(d, exe));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The command and arguments that run `exe args` with SIGTERM as its parent-death signal, when possible. */
export function withParentDeathSignal(exe: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): { command: string; args: string[] } {
  const setpriv = which('setpriv', env);
  if (setpriv === undefined || which(exe, env) === undefined) return { command: exe, args: [...args] };
  return { command: setpriv, args: ['--pdeathsig', 'TERM', '--', exe, ...args] };
}
