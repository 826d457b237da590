// Helpers shared by the benchmark suites: timing, formatting and the result file protocol (see run.mjs).
import { writeFileSync } from 'node:fs';

export const quick = process.argv.includes('--quick');

/** Run fn repeatedly for at least minMs (after one warm-up call); return the best ops/s over `rounds` rounds. */
export async function measure(fn, { minMs = quick ? 100 : 400, rounds = quick ? 2 : 5 } = {}) {
  await fn();
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    let n = 0;
    const t0 = process.hrtime.bigint();
    let elapsed = 0;
    do {
      await fn();
      n++;
      elapsed = Number(process.hrtime.bigint() - t0) / 1e6;
    } while (elapsed < minMs);
    best = Math.max(best, (n * 1000) / elapsed);
  }
  return best;
}

export const fmtGBs = (bytesPerSec) => (bytesPerSec / 1e9).toFixed(2);
export const fmtMBs = (bytesPerSec) => (bytesPerSec / 1e6).toFixed(0);

/** Write the suite's result for bench/run.mjs. */
export function report(result) {
  const out = process.env.VMSEAL_BENCH_OUT;
  if (out) writeFileSync(out, JSON.stringify(result));
  else console.log(JSON.stringify(result, null, 2));
}
