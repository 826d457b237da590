/**
 * The disk-image conversion script: `vmseal convert` over many images. Finds the images (a
 * directory or a list file), names their outputs, runs one conversion per image — several at once,
 * taken in input order — with an injectable per-image function, keeps going past a failure, and
 * records per image: ok or failed with the reason, bytes, seconds.
 */
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { basename, extname, join, resolve } from 'node:path';
import { classify, CliError, cliReason } from './errors.js';
import { ExitCode, type ExitCodeValue } from './exit-codes.js';
import type { Subformat } from './parse.js';
import { isStagingFolderName } from '../pipeline/staging.js';
import { BatchQueue } from './batch-queue.js';
import { MAX_DEFAULT_JOBS, MAX_JOBS } from './batch-limits.js';

export interface BatchItem {
  input: string;
  output: string;
  /**
   * The staging folders of its output's name (`.<name>.vmseal-tmp-…`, left by a killed job) that
   * the batch found when it listed its output folder, once for all its images (stageListing).
   * Undefined: the image's job lists the folder itself.
   */
  stages?: readonly string[];
}

export interface BatchItemResult {
  input: string;
  output: string;
  ok: boolean;
  /** Bytes of virtual disk converted (0 when it failed before starting). */
  bytes: number;
  seconds: number;
  /** True when its output existed and --skip-existing kept it (ok, nothing converted). */
  skipped?: boolean;
  /** Set when it failed: the error's stable code, the one-clause reason and the exit code it maps to. */
  error?: { code: string; reason: string; exitCode: ExitCodeValue };
}

export interface BatchOutcome {
  /** The images that ran to an end (ok, skipped or failed), in input order. */
  results: BatchItemResult[];
  /** True when an AbortSignal stopped the batch: the images in flight were cleaned up and, like the ones not started, not run. */
  interrupted: boolean;
}

export type ConvertOne = (item: BatchItem, signal: AbortSignal | undefined) => Promise<{ bytes: number; skipped?: boolean }>;

/** Image file names a directory scan picks up. */
const IMAGE_EXTENSIONS = new Set(['.vmdk', '.img', '.raw']);
const DESCRIPTOR_MAGIC = '# Disk DescriptorFile';
/** Text descriptors are small; a bigger file is an extent or an image, not a descriptor. */
const DESCRIPTOR_MAX_BYTES = 64 * 1024;

export { MAX_DEFAULT_JOBS, MAX_JOBS };

/** A finished image's result, or the mark of one that an abort stopped in flight (not run). */
type Slot = { kind: 'done'; result: BatchItemResult } | { kind: 'not-run' };

/**
 * Images converted elsewhere than on this thread (worker threads, src/cli/batch-pool.ts): they take
 * their images from the same queue and report each one's end through `record`.
 */
export interface BatchHelpers {
  /** Start taking images from `queue`; `record(index, undefined)` marks one an abort stopped. */
  start(queue: BatchQueue, record: (index: number, result: BatchItemResult | undefined) => void): void;
  /** Stop the images in flight (Ctrl-C): each then records itself as not run. */
  abort(): void;
}

/**
 * Run `convertOne` over the items, `jobs` at a time on this thread (default 1), taking them in input
 * order from a queue that `helpers` (worker threads) take from too. A failure is recorded and the
 * next item runs; an abort stops handing out items, lets the ones in flight clean up after
 * themselves and counts them as not run. `onDone`/`onNotRun` are called in input order whatever
 * order the items finish in (a result waits for the ones before it), so what they print reads as a
 * sequential batch would.
 */
export async function runBatch(
  items: readonly BatchItem[],
  convertOne: ConvertOne,
  opts: {
    signal?: AbortSignal;
    jobs?: number;
    queue?: BatchQueue;
    helpers?: BatchHelpers;
    onStart?: (item: BatchItem, index: number, count: number) => void;
    onDone?: (result: BatchItemResult, index: number, count: number) => void;
    onNotRun?: (item: BatchItem, index: number, count: number) => void;
  } = {},
): Promise<BatchOutcome> {
  const count = items.length;
  const queue = opts.queue ?? new BatchQueue(count, 0);
  const slots: Array<Slot | undefined> = new Array<Slot | undefined>(count);
  let reported = 0;
  let recorded = 0;
  /** Set by an abort: how many items were handed out (the batch ends once those are recorded). */
  let handed: number | undefined;
  let interrupted = false;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const settleIfDone = (): void => {
    if (recorded >= (handed ?? count)) finish();
  };
  // Report every finished slot that no earlier unfinished one holds back.
  const flush = (): void => {
    for (let slot = slots[reported]; slot !== undefined && reported < (handed ?? count); slot = slots[reported]) {
      if (slot.kind === 'done') opts.onDone?.(slot.result, reported, count);
      else opts.onNotRun?.(items[reported]!, reported, count);
      reported++;
    }
  };
  const record = (index: number, result: BatchItemResult | undefined): void => {
    if (slots[index] !== undefined) return;
    if (result === undefined) stop();
    slots[index] = result === undefined ? { kind: 'not-run' } : { kind: 'done', result };
    recorded++;
    flush();
    settleIfDone();
  };
  const stop = (): void => {
    interrupted = true;
    if (handed !== undefined) return;
    handed = queue.stop();
    opts.helpers?.abort();
    settleIfDone();
  };
  const onAbort = (): void => stop();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  if (opts.signal?.aborted === true) stop();
  try {
    opts.helpers?.start(queue, record);
    const local = async (): Promise<void> => {
      for (let index = queue.take(); index !== undefined; index = queue.take()) {
        const item = items[index]!;
        opts.onStart?.(item, index, count);
        record(index, await runOne(item, convertOne, opts.signal));
      }
    };
    const jobs = Math.max(1, Math.min(opts.jobs ?? 1, count));
    await Promise.all(Array.from({ length: jobs }, local));
    settleIfDone();
    await finished;
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
  const results = slots.flatMap((s) => (s?.kind === 'done' ? [s.result] : []));
  return { results, interrupted: interrupted || opts.signal?.aborted === true };
}

/** Why an image failed, as its summary line and the JSON result say it. */
export type ItemError = NonNullable<BatchItemResult['error']>;

/** One item's result, or undefined when an abort (or an interruption) stopped it. */
async function runOne(item: BatchItem, convertOne: ConvertOne, signal: AbortSignal | undefined): Promise<BatchItemResult | undefined> {
  const started = performance.now();
  const seconds = (): number => (performance.now() - started) / 1000;
  try {
    const { bytes, skipped } = await convertOne(item, signal);
    return { input: item.input, output: item.output, ok: true, bytes, seconds: seconds(), ...(skipped ? { skipped: true } : {}) };
  } catch (err) {
    const error = describeFailure(err, signal);
    if (error === undefined) return undefined;
    return { input: item.input, output: item.output, ok: false, bytes: 0, seconds: seconds(), error };
  }
}

/**
 * What a batch records of an image's error: its stable code, the one-clause reason and the exit
 * code it maps to; undefined when it is an interruption (the image counts as not run).
 */
export function describeFailure(err: unknown, signal: AbortSignal | undefined): ItemError | undefined {
  const { exitCode, hint } = classify(err, 'convert');
  // A failure while the batch is being aborted is the abort's doing (a closed file, a cancelled batch).
  if (exitCode === ExitCode.INTERRUPTED || signal?.aborted === true) return undefined;
  const code = typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : 'ERR_UNEXPECTED';
  return {
    code,
    // The per-image line has no room for the generic hint, but an existing output's hint is what to do next.
    reason:
      /EXISTS$/.test(code) && hint !== undefined ? `${cliReason(err, 'convert')} (${hint.charAt(0).toLowerCase()}${hint.slice(1)})` : cliReason(err, 'convert'),
    exitCode,
  };
}

/** The exit code of a whole batch: 0 if all succeeded, 130 if interrupted, else 1. */
export function batchExitCode(outcome: BatchOutcome): ExitCodeValue {
  if (outcome.interrupted) return ExitCode.INTERRUPTED;
  return outcome.results.every((r) => r.ok) ? ExitCode.OK : ExitCode.FAILURE;
}

async function isTextDescriptor(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(DESCRIPTOR_MAGIC.length);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    return head.subarray(0, bytesRead).toString('latin1') === DESCRIPTOR_MAGIC;
  } finally {
    await fh.close();
  }
}

/** File names a text descriptor names as its extents (`RW 2048 FLAT "x-flat.vmdk" 0`). */
export function extentFileNames(descriptorText: string): string[] {
  const names: string[] = [];
  for (const line of descriptorText.split(/\r?\n/)) {
    const m = /^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+[A-Z]+\s+"([^"]*)"/.exec(line);
    if (m && m[1]) names.push(m[1]);
  }
  return names;
}

/**
 * The disk images in a directory (not recursive), sorted by name: files ending .vmdk, .img or
 * .raw, minus the extent files that a text descriptor in the same directory names (a
 * monolithicFlat disk is `x.vmdk` + `x-flat.vmdk`: one image, not two), minus hidden files
 * (vmseal's own temporary outputs start with a dot).
 */
export async function listImagesInDirectory(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const candidates = entries
    .filter((e) => e.isFile() && !e.name.startsWith('.') && IMAGE_EXTENSIONS.has(extname(e.name).toLowerCase()))
    .map((e) => e.name)
    .sort();
  const extents = new Set<string>();
  for (const name of candidates) {
    const path = join(dir, name);
    if (extname(name).toLowerCase() !== '.vmdk') continue;
    const st = await stat(path);
    if (st.size > DESCRIPTOR_MAX_BYTES || !(await isTextDescriptor(path))) continue;
    for (const extent of extentFileNames(await readFile(path, 'utf8'))) extents.add(basename(extent));
  }
  return candidates.filter((n) => !extents.has(n)).map((n) => join(dir, n));
}

/**
 * A list file: one image path per line; blank lines and lines starting with `#` are skipped;
 * leading/trailing white space is trimmed; relative paths are relative to the current directory.
 */
export async function readImageList(listFile: string): Promise<string[]> {
  const text = await readFile(listFile, 'utf8');
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0 && !l.startsWith('#'))
    .map((l) => resolve(l));
}

/** The output file name for an image: its stem plus .img for raw output, .vmdk otherwise. */
export function outputNameFor(input: string, subformat: Subformat): string {
  const name = basename(input);
  const ext = extname(name);
  const stem = ext ? name.slice(0, -ext.length) : name;
  return `${stem}${subformat === 'raw' ? '.img' : '.vmdk'}`;
}

/**
 * The entries of a batch's output folder that each item's job would look for (staging folders of
 * its output's name), from ONE listing of the folder: a job that lists the folder itself costs a
 * batch a listing per image, each as long as the outputs written so far. Items of an unreadable
 * folder are left to list it themselves.
 */
export async function withStageListing(items: readonly BatchItem[], outDir: string): Promise<BatchItem[]> {
  const entries = await readdir(outDir).catch(() => undefined);
  if (entries === undefined) return [...items];
  // Usually none: a batch's folder holds its outputs, and staging folders only while jobs run or after a kill.
  const stages = entries.filter((e) => isStagingFolderName(e));
  return items.map((item) => {
    const name = basename(item.output);
    return { ...item, stages: stages.filter((e) => isStagingFolderName(e, name)) };
  });
}

/** Pair every input with its output in `outDir`; two inputs that would share an output name are an error. */
export function planBatch(inputs: readonly string[], outDir: string, subformat: Subformat): BatchItem[] {
  const seen = new Map<string, string>();
  const items: BatchItem[] = [];
  for (const input of inputs) {
    const output = join(outDir, outputNameFor(input, subformat));
    const previous = seen.get(output);
    if (previous !== undefined) {
      throw new CliError('ERR_CLI_BATCH_COLLISION', `${input} and ${previous} would both be written to ${output}`, {
        exitCode: ExitCode.USAGE,
        hint: 'Rename one of them or convert them in separate runs',
      });
    }
    seen.set(output, input);
    items.push({ input, output });
  }
  return items;
}
