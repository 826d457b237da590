/**
 * The parent's side of a crash test: run a fixture child under the fault-injecting layer
 * (test/helpers/crash-fs.ts, installed by the child) and read what it reported. The child is told
 * where the files it may lose lie (CRASH_ROOT), at which durability-relevant call to simulate the
 * power loss (CRASH_AT, 0: never) and which un-synced writes survive it (CRASH_KEEP); a run to the
 * end prints `events=N` (how many such calls it made) and `kinds=…` (their kinds, one letter each).
 */
import { spawnSync } from 'node:child_process';

export interface CrashRun {
  signal: NodeJS.Signals | null;
  status: number | null;
  stdout: string;
  stderr: string;
  /** Durability-relevant calls the child made (0 when it was killed before printing them). */
  events: number;
  /** Their kinds, in order ('' when not printed). */
  kinds: string;
}

/** Run `node child ...args` with the crash layer's settings; `env` adds to (or overrides) them. */
export function runCrashChild(
  child: string,
  args: readonly string[],
  o: { root: string; crashAt: number; keep?: string; env?: Record<string, string> },
): CrashRun {
  const r = spawnSync(process.execPath, [child, ...args], {
    env: { ...process.env, CRASH_ROOT: o.root, CRASH_AT: String(o.crashAt), ...(o.keep === undefined ? {} : { CRASH_KEEP: o.keep }), ...o.env },
    encoding: 'utf8',
  });
  return {
    signal: r.signal,
    status: r.status,
    stdout: r.stdout,
    stderr: r.stderr,
    events: Number(/events=(\d+)/.exec(r.stdout)?.[1] ?? 0),
    kinds: /kinds=(\w*)/.exec(r.stdout)?.[1] ?? '',
  };
}
