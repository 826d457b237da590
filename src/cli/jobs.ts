/**
 * Glue between a pipeline job and the terminal: the AbortSignal, a progress bar fed by the job's
 * progress events, and the human summary line of a finished job.
 */
import type { Ctx } from './context.js';
import { CliError } from './errors.js';
import { ExitCode } from './exit-codes.js';
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

/**
 * Run a job with progress hooks, stopping the bar whatever happens. `label` names a bar of the job's
 * own; a batch passes hooks instead, which feed its one bar.
 */
export async function withHooks<T>(ctx: Ctx, label: string | JobHooks, run: (hooks: JobHooks) => Promise<T>): Promise<T> {
  const hooks = typeof label === 'string' ? jobHooks(ctx, label) : label;
  try {
    return await run(hooks);
  } catch (err) {
    throw outputLimitError(ctx, err);
  } finally {
    hooks.done();
  }
}

// The VMDK writer refuses a sparse extent of 2 TiB or more with ERR_INVALID_ARGUMENT (an argument of
// createDisk). For a user it is a limit of the input's subformat (qemu-img makes such images),
// not a mistake on the command line: exit 5 with the subformat that holds the disk.
// The copy's own up-front check (ERR_VMDK_LIMIT: the data plus tables would pass what one sparse file
// addresses) gets the same hint.
const SPARSE_EXTENT_LIMIT = /too large for one sparse extent/;
const SPARSE_FILE_FULL = /one sparse extent file cannot hold/;

/** The writer's "too large for one sparse extent" and the copy's "cannot hold" as a limit of the subformat (ERR_VMDK_LIMIT, exit 5, with a hint); other errors unchanged. */
export function outputLimitError(ctx: Pick<Ctx, 'command'>, err: unknown): unknown {
  const e = err as { code?: unknown; message?: unknown };
  if (typeof e?.message !== 'string') return err;
  const limit = e.code === 'ERR_INVALID_ARGUMENT' && SPARSE_EXTENT_LIMIT.test(e.message);
  const full = e.code === 'ERR_VMDK_LIMIT' && SPARSE_FILE_FULL.test(e.message);
  if (!limit && !full) return err;
  const hasSubformat = ctx.command === 'encrypt' || ctx.command === 'decrypt' || ctx.command === 'convert';
  return new CliError('ERR_VMDK_LIMIT', full ? e.message : `${e.message}; the disk is too large for the monolithicSparse subformat`, {
    exitCode: ExitCode.FORMAT,
    hint: hasSubformat
      ? 'Write it with --subformat twoGbMaxExtentSparse (one sparse extent per 2 GiB) or monolithicFlat'
      : 'Convert it first with `vmseal convert DISK OUT --subformat twoGbMaxExtentSparse` (one sparse extent per 2 GiB)',
    cause: err,
  });
}

/** "1.00 GiB in 2.31 s (465 MB/s)" */
export function throughputText(bytes: number, seconds: number): string {
  return `${formatBytes(bytes)} in ${formatDuration(seconds)} (${formatRate(bytes, seconds)})`;
}
