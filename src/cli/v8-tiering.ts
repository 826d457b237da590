/**
 * V8's optimising compiler (TurboFan) in a batch. V8 optimises a function once it has run enough
 * bytecode (its "interrupt budget"), on background threads. A batch of small images runs the same
 * few hundred functions per image: in a batch of 200 images of 2 MiB, `perf` put a quarter of the
 * process's CPU time in TurboFan's compiler threads (twice, with a worker thread: each isolate
 * optimises its own code), on the same two cores the images' event loops need. Four times Node
 * 20's budget (V8 11.3: 66 KiB of bytecode) leaves the code that runs a few times per image in
 * V8's baseline tiers, and still optimises the hot loops of a long job a few milliseconds later.
 * Measured (docs/performance.md, "One thread per core"): a batch's CPU time −20 %, its peak memory
 * −20 MiB.
 *
 * A batch only: V8 ties every code cache to the flags it was made with, Node's own built-in modules'
 * included, so a changed flag makes each built-in loaded afterwards compile from source — 3 to 10
 * ms more CPU for `--version`, `info` or a small `encrypt`, which the budget does not win back. Set
 * by bin/vmseal.js before the CLI's script is compiled, for a command line isBatchCommandLine calls
 * a batch, whose code cache is then its own (`main.js.convert-batch.cache`, code-cache.ts): set
 * later, every cache written at exit mismatched the next start. Process-wide: a batch's worker
 * threads have it too. A budget given on node's own command line (`node --interrupt-budget=N …`)
 * is left as it is.
 */
import { statSync } from 'node:fs';
import { createRequire } from 'node:module';

/** A batch's interrupt budget, in bytes of bytecode run: 4 × V8 11.3's default. */
export const BATCH_INTERRUPT_BUDGET = 4 * 66 * 1024;

/**
 * Whether a command line converts a batch (docs/cli.md, "Convert many images"): `convert` with
 * `--list`, or with a folder among its arguments. Read before the CLI parses them: an option's
 * value that happens to name a folder counts too, which costs only the budget's trade-off.
 */
export function isBatchCommandLine(argv: readonly string[], isFolder: (path: string) => boolean = folderExists): boolean {
  const at = argv.findIndex((a) => !a.startsWith('-'));
  if (at < 0 || argv[at] !== 'convert') return false;
  const rest = argv.slice(at + 1);
  return rest.some((a) => a === '--list' || a.startsWith('--list=')) || rest.some((a) => !a.startsWith('-') && isFolder(a));
}

function folderExists(path: string): boolean {
  try {
    return statSync(path, { throwIfNoEntry: false })?.isDirectory() ?? false;
  } catch {
    return false;
  }
}

/**
 * The public built-in modules a batch's CLI loads, loaded before the budget is raised: Node's
 * embedded code cache of a built-in is made under V8's default flags, so one first loaded after the
 * change is compiled from source (with its internal modules). Loading these first saved ≈6 ms of
 * a batch's start (a 2-image batch, 30 pairs: 65 against 71 ms). A module missing here costs that
 * time, no more: test/cli/v8-tiering.test.ts checks that a batch loads none after the change.
 */
export const BATCH_BUILTINS = [
  'crypto',
  'diagnostics_channel',
  'fs/promises',
  // for the process's output streams when they are pipes or terminals
  'net',
  'os',
  'perf_hooks',
  'process',
  'stream',
  'stream/promises',
  'string_decoder',
  'worker_threads',
];

/** Raise V8's interrupt budget for a batch's command line; false when not a batch or node's command line set one (kept). */
export function useBatchTiering(argv: readonly string[] = process.argv.slice(2), execArgv: readonly string[] = process.execArgv): boolean {
  if (execArgv.some((a) => /^--interrupt[-_]budget(=|$)/.test(a)) || !isBatchCommandLine(argv)) return false;
  // node:v8 and the batch's built-ins only here: every command's start loads this module (through code-cache.js).
  const load = createRequire(import.meta.url);
  for (const name of BATCH_BUILTINS) load(`node:${name}`);
  const v8 = load('node:v8') as typeof import('node:v8');
  v8.setFlagsFromString(`--interrupt-budget=${BATCH_INTERRUPT_BUDGET}`);
  return true;
}
