/**
 * What a command prints. Three modes:
 *   human  — lines for people on stdout, a progress bar on stderr when stderr is a terminal;
 *   json   — exactly one JSON object per command on stdout (also on failure), nothing else there;
 *   quiet  — nothing but the one-line error on stderr.
 * Errors always go to stderr as one line, in every mode.
 */
import { createRequire } from 'node:module';
import type * as CliProgress from 'cli-progress';
import { formatBytes, formatRate } from './parse.js';

// cli-progress is loaded when a bar is first shown (a terminal), not at every start-up: a command
// run from a script or with --json never pays for it.
const requireFromHere = createRequire(import.meta.url);
const progressBars = (): typeof CliProgress => requireFromHere('cli-progress') as typeof CliProgress;

export interface OutputOptions {
  json?: boolean;
  quiet?: boolean;
  /** Force the progress bar on or off; default: on when stderr is a TTY (and not json/quiet). */
  progress?: boolean;
}

export interface Streams {
  stdout: NodeJS.WritableStream & { isTTY?: boolean };
  stderr: NodeJS.WritableStream & { isTTY?: boolean };
}

/** A progress update as the pipeline reports it. */
export interface ProgressUpdate {
  bytesDone: number;
  bytesTotal: number;
  /** Bytes per second, if the reporter knows it. */
  rate?: number;
  /** Seconds left, if known. */
  etaSeconds?: number;
}

export interface ProgressReporter {
  update(p: ProgressUpdate): void;
  stop(): void;
}

const NO_PROGRESS: ProgressReporter = { update() {}, stop() {} };

export class Output {
  readonly json: boolean;
  readonly quiet: boolean;
  private readonly showProgress: boolean;
  private readonly streams: Streams;
  /** Stops the bar being drawn, if one is (printing text must not interleave with it). */
  private stopActiveBar: (() => void) | undefined;
  private jsonWritten = false;

  constructor(opts: OutputOptions = {}, streams: Streams = { stdout: process.stdout, stderr: process.stderr }) {
    this.json = opts.json === true;
    this.quiet = opts.quiet === true;
    this.streams = streams;
    this.showProgress = opts.progress ?? (!this.json && !this.quiet && streams.stderr.isTTY === true);
  }

  /** A line for humans (suppressed by --json and --quiet). */
  line(text = ''): void {
    if (this.json || this.quiet) return;
    this.clearBar();
    this.streams.stdout.write(`${text}\n`);
  }

  /**
   * A note for humans on stderr (where temp files went, what is happening); not in --quiet. Never
   * with the "vmseal: " prefix: that marks an error line, and scripts and people grep for it.
   */
  note(text: string): void {
    if (this.quiet) return;
    this.clearBar();
    this.streams.stderr.write(`${text.replace(/^vmseal: /, '')}\n`);
  }

  /** Aligned "key: value" lines, like `qemu-img info`. */
  table(rows: ReadonlyArray<readonly [string, string]>): void {
    const width = Math.max(0, ...rows.map(([k]) => k.length));
    for (const [k, v] of rows) this.line(`${`${k}:`.padEnd(width + 2)}${v}`);
  }

  /** The one JSON object of this command (only in --json mode; written at most once). */
  result(obj: Record<string, unknown>): void {
    if (!this.json || this.jsonWritten) return;
    this.jsonWritten = true;
    this.streams.stdout.write(`${JSON.stringify(obj, jsonReplacer)}\n`);
  }

  get resultWritten(): boolean {
    return this.jsonWritten;
  }

  /** The one-line error, on stderr in every mode. */
  error(line: string): void {
    this.clearBar();
    this.streams.stderr.write(`${line}\n`);
  }

  /** A progress bar for one job (or a no-op when bars are off). */
  progress(label: string): ProgressReporter {
    if (!this.showProgress) return NO_PROGRESS;
    const { format, barsize } = progressLayout(label, (this.streams.stderr as { columns?: number }).columns);
    const bar = new (progressBars().SingleBar)({
      stream: this.streams.stderr as NodeJS.WritableStream as never,
      format,
      barsize,
      barCompleteChar: '#',
      barIncompleteChar: '-',
      hideCursor: true,
      clearOnComplete: true,
      stopOnComplete: false,
      etaBuffer: 20,
      fps: 10,
      noTTYOutput: false,
    });
    let started = false;
    const start = Date.now();
    const stop = (): void => {
      if (started) bar.stop();
      started = false;
      if (this.stopActiveBar === stop) this.stopActiveBar = undefined;
    };
    this.stopActiveBar = stop;
    return {
      update: (p: ProgressUpdate) => {
        const elapsed = (Date.now() - start) / 1000;
        const rate = p.rate ?? (elapsed > 0 ? p.bytesDone / elapsed : 0);
        const eta = p.etaSeconds ?? (rate > 0 ? (p.bytesTotal - p.bytesDone) / rate : Number.NaN);
        const payload = {
          doneText: formatBytes(p.bytesDone),
          totalText: formatBytes(p.bytesTotal),
          rateText: rate > 0 ? formatRate(rate, 1) : '-',
          etaText: etaText(eta),
        };
        const total = Math.max(1, p.bytesTotal);
        if (!started) {
          bar.start(total, Math.min(p.bytesDone, total), payload);
          started = true;
          // A line printed in between stopped the bar (a batch's per-image lines): drawn again, it is
          // again the one to clear before the next line.
          this.stopActiveBar = stop;
        } else {
          bar.setTotal(total);
          bar.update(Math.min(p.bytesDone, total), payload);
        }
      },
      stop,
    };
  }

  private clearBar(): void {
    this.stopActiveBar?.();
  }
}

/** A short ETA for the bar: "42s", "12m05s", "4h43m" (at most 7 characters below 1000 hours). */
export function etaText(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

// The widest text each field of the bar can take (sizes below 1 PiB, rates below 10 GB/s).
const FIELD_WIDTH = { percentage: 3, doneText: 9, totalText: 9, rateText: 9, etaText: 7 } as const;
const MAX_BAR = 40;
const MIN_BAR = 3;

/**
 * The bar's format and width for a terminal of `columns`: the numbers (size, rate, ETA) are what a
 * user reads, so a narrow terminal shortens the bar, then the separators, then drops the bar —
 * never the numbers (cli-progress cuts whatever passes the terminal's width).
 */
export function progressLayout(label: string, columns: number | undefined): { format: string; barsize: number } {
  const width = (columns !== undefined && columns > 0 ? columns : 80) - 1; // the last column would wrap on some terminals
  const fixed = (format: string): number =>
    Object.entries(FIELD_WIDTH).reduce((n, [k, w]) => n.replace(`{${k}}`, 'x'.repeat(w)), format.replace('{bar}', '')).length;
  const layouts = [
    `${label.padEnd(8)} [{bar}] {percentage}% | {doneText} / {totalText} | {rateText} | ETA {etaText}`,
    `${label} [{bar}] {percentage}% {doneText}/{totalText} {rateText} ETA {etaText}`,
  ];
  for (const format of layouts) {
    const barsize = Math.min(MAX_BAR, width - fixed(format));
    if (barsize >= MIN_BAR) return { format, barsize };
  }
  return { format: `${label} {percentage}% {doneText}/{totalText} {rateText} ETA {etaText}`, barsize: 0 };
}

/** JSON for machines: bigint as number when safe (sizes), Buffers never (they could be keys). */
function jsonReplacer(this: Record<string, unknown>, key: string, value: unknown): unknown {
  // `this[key]` is the value before toJSON (a Buffer's toJSON would already have turned it into bytes).
  if (this[key] instanceof Uint8Array) return undefined;
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  return value;
}
