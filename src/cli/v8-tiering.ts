/**
 * V8's optimising compiler (TurboFan) in the CLI. V8 optimises a function once it has run enough
 * bytecode (its "interrupt budget"), on background threads. A CLI process is short, and a batch of
 * small images runs the same few hundred functions per image: in a batch of 200 images of 2 MiB,
 * `perf` put a quarter of the process's CPU time in TurboFan's compiler threads (twice, with a
 * worker thread: each isolate optimises its own code), on the same two cores the images' event
 * loops need. Four times Node 20's budget (V8 11.3: 66 KiB of bytecode) leaves the code that runs a
 * few times per image in V8's baseline tiers, and still optimises the hot loops of a long job a few
 * milliseconds later. Measured (docs/performance.md, "One thread per core"): a batch's CPU time
 * −20 %, its peak memory −20 MiB.
 *
 * Set once, by bin/vmseal.js, before the CLI's script is compiled: V8 ties a code cache to the
 * flags it was made with, so a flag changed later in the run made every cache written at exit
 * mismatch the next start (a batch that raised the budget when it began rewrote
 * main.js.convert.cache at every run). Process-wide: a batch's worker threads have it too. A
 * budget given on node's own command line (`node --interrupt-budget=N …`) is left as it is.
 */
import { setFlagsFromString } from 'node:v8';

/** The CLI's interrupt budget, in bytes of bytecode run: 4 × V8 11.3's default. */
export const CLI_INTERRUPT_BUDGET = 4 * 66 * 1024;

/** Raise V8's interrupt budget for this process; false when node's command line set one (kept). */
export function useCliTiering(execArgv: readonly string[] = process.execArgv): boolean {
  if (execArgv.some((a) => /^--interrupt[-_]budget(=|$)/.test(a))) return false;
  setFlagsFromString(`--interrupt-budget=${CLI_INTERRUPT_BUDGET}`);
  return true;
}
