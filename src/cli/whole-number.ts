/**
 * What a numeric option accepts (--jobs, --threads, timeouts): a whole number in [min, max],
 * written in decimal digits with optional surrounding blanks. A module with no imports: the CLI's
 * loader reads --jobs by this rule before the CLI itself is compiled (src/cli/batch-worker-start.ts).
 */
export function wholeNumberIn(value: string, bounds: { min: number; max: number }): number | undefined {
  const n = /^\s*\d+\s*$/.test(value) ? Number(value) : Number.NaN;
  return Number.isSafeInteger(n) && n >= bounds.min && n <= bounds.max ? n : undefined;
}
