/**
 * Budget of the property/fuzz tests. `npm test` runs them with fixed seeds and small budgets so CI is
 * repeatable; `npm run fuzz` (scripts/fuzz.mjs) sets VMSEAL_FUZZ_SCALE to multiply every budget and
 * VMSEAL_FUZZ_SEED to explore new inputs (printed, so a failure can be replayed).
 */
const scale = Math.max(1, Number(process.env.VMSEAL_FUZZ_SCALE ?? 1) || 1);
const seedOverride = process.env.VMSEAL_FUZZ_SEED === undefined ? undefined : Number(process.env.VMSEAL_FUZZ_SEED);

/** fast-check parameters: the test's own fixed seed unless a fuzz run overrides it, runs × scale. */
export function fuzzParams(seed: number, numRuns: number): { seed: number; numRuns: number } {
  return { seed: seedOverride ?? seed, numRuns: Math.round(numRuns * scale) };
}
