/**
 * Which crash or kill points a crash test visits, and how big its long-form inputs are.
 *
 * The crash and kill tests run a job once to count its durability-relevant calls (1…total), then
 * crash it at some of them. Visiting every call makes a file take minutes; `npm test` visits a
 * deterministic sample, `npm run fuzz` (scripts/fuzz.mjs) sets VMSEAL_TEST_FULL=1 — one switch for
 * every such test — and they visit every call (and use their full-size inputs: see `full`).
 *
 * The sample, the same on every run (no clock, no random seed from outside):
 *  - the first `first` and the last `last` calls (2 and 2 unless told): the job's set-up and its commit;
 *  - with `kinds` (one letter a call, in order: test/helpers/crash-fs.ts's `kinds`), the first and
 *    the last call of each kind: a rename, an unlink or a folder sync happens a few times in a run
 *    and each one is a step of a commit protocol;
 *  - `keep`: the points at which a past bug was caught (a test names them with the commit);
 *  - `spread` points evenly spaced over the whole run, their start shifted by `seed`.
 */
export const FULL = process.env.VMSEAL_TEST_FULL === '1';

/** `small` in `npm test`, `large` under VMSEAL_TEST_FULL=1 (`npm run fuzz`). */
export function full<T>(small: T, large: T): T {
  return FULL ? large : small;
}

export interface PointOptions {
  /** How many points to spread evenly over the whole run, besides the edges, kinds and `keep`. */
  spread: number;
  /** Seeds where the spread starts, so that two tests of one job do not visit the same calls. */
  seed?: number;
  /** One letter per call, in order (CrashFs.kinds): the first and last call of each kind are visited. */
  kinds?: string;
  /** Points always visited (a past bug's): those in 1…total. */
  keep?: readonly number[];
  /** How many of the run's first calls are visited (default 2). */
  first?: number;
  /** How many of the run's last calls are visited (default 2). */
  last?: number;
}

/** The points 1…total to crash at, ascending: all of them under VMSEAL_TEST_FULL=1, else the sample. */
export function crashPoints(total: number, opts: PointOptions): number[] {
  const all = Array.from({ length: Math.max(0, total) }, (_, i) => i + 1);
  if (FULL) return all;
  const pts = new Set<number>();
  for (let i = 1; i <= (opts.first ?? 2); i++) pts.add(i);
  for (let i = 0; i < (opts.last ?? 2); i++) pts.add(total - i);
  if (opts.kinds !== undefined) {
    for (const k of new Set(opts.kinds)) {
      pts.add(opts.kinds.indexOf(k) + 1);
      pts.add(opts.kinds.lastIndexOf(k) + 1);
    }
  }
  for (const p of opts.keep ?? []) pts.add(p);
  if (opts.spread > 0) {
    const stride = total / opts.spread;
    // The seed's golden-ratio fraction: distinct seeds start the spread at well separated offsets.
    const offset = ((opts.seed ?? 0) * 0.6180339887) % 1;
    for (let i = 0; i < opts.spread; i++) pts.add(1 + Math.floor((i + offset) * stride));
  }
  return [...pts].filter((p) => p >= 1 && p <= total).sort((a, b) => a - b);
}
