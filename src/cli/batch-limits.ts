/**
 * The bounds of `--jobs`, in a module with no imports: the option's declaration (program.ts) is part
 * of every CLI start, and the batch script (batch.ts) pulls in the pipeline's staging code.
 */

/** The most images a batch converts at once by default (two threads of two); 2 on a 1-core machine (defaultJobs, batch-lanes.ts). */
export const MAX_DEFAULT_JOBS = 4;
/** The bound of --jobs: each job holds its own chunk buffers and file handles. */
export const MAX_JOBS = 64;
