// Runs before every test file: property tests that name no seed of their own still get a fixed one,
// so `npm test` is repeatable (scripts/fuzz.mjs overrides it with VMSEAL_FUZZ_SEED).
import fc from 'fast-check';

fc.configureGlobal({ seed: Number(process.env.VMSEAL_FUZZ_SEED ?? 20261128) });
