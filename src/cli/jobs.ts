/**
 * Glue between a pipeline job and the terminal: the AbortSignal, a progress bar fed by the job's
 * progress events, and the human summary line of a finished job.
 */
import type { Ctx } from './context.js';
import { formatBytes, formatDuration, formatRate } from './parse.js';

export interface JobProgressEvent {
  phase?: string;
  bytesDone: number;
  bytesTotal: number;
  rate?: number;
  etaSeconds?: number | null;
}

export interface JobHooks {
  signal: AbortSignal;
  onProgress: (p: JobProgressEvent) => void;
  /** Stop the bar (always call, success or not). */
  done: () => void;
}

/** Progress hooks for one job; `label` heads the bar ("encrypt", "decrypt", …). */
export function jobHooks(ctx: Ctx, label: string): JobHooks {
  const bar = ctx.output.progress(label);
  return {
    signal: ctx.signal,
    onProgress: (p) => {
      bar.update({
        bytesDone: p.bytesDone,
        bytesTotal: p.bytesTotal,
        ...(p.rate !== undefined ? { rate: p.rate } : {}),
        ...(p.etaSeconds !== undefined && p.etaSeconds !== null ? { etaSeconds: p.etaSeconds } : {}),
      });
    },
    done: () => bar.stop(),
  };
}

/** Run a job with progress hooks, stopping the bar whatever happens. */
export async function withHooks<T>(ctx: Ctx, label: string, run: (hooks: JobHooks) => Promise<T>): Promise<T> {
  const hooks = jobHooks(ctx, label);
  try {
    return await run(hooks);
  } finally {
    hooks.done();
  }
}

/** "1.00 GiB in 2.31 s (465 MB/s)" */
export function throughputText(bytes: number, seconds: number): string {
  return `${formatBytes(bytes)} in ${formatDuration(seconds)} (${formatRate(bytes, seconds)})`;
}
