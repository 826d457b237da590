/**
 * `vmseal convert IN OUT` for one image, and the batch form (the disk-image conversion script):
 * `vmseal convert DIR OUTDIR --subformat S …` or `vmseal convert --list FILE OUTDIR --subformat S …`.
 */
import { mkdir, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { LockerSpec } from '../../keys/index.js';
import type { JobResult } from '../../pipeline/index.js';
import {
  batchExitCode,
  listImagesInDirectory,
  planBatch,
  readImageList,
  runBatch,
  type BatchItem,
  type BatchItemResult,
  type ConvertOne,
  withStageListing,
} from '../batch.js';
import type { Ctx } from '../context.js';
import { CliError, usageError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';
import { throughputText, withHooks, type JobHooks } from '../jobs.js';
import { batchProgress } from '../batch-progress.js';
import { BatchPool, batchWorkerScript } from '../batch-pool.js';
import { defaultJobs, IMAGES_PER_THREAD, planLanes } from '../batch-lanes.js';
import { claimPrestartedWorkers } from '../batch-worker-start.js';
import { BatchQueue } from '../batch-queue.js';
import { KeyDesk } from '../key-bridge.js';
import { KeySession, checkRoundsHaveLocker, withKeys, type KeyCliOptions } from '../key-session.js';
import { formatBytes, formatDuration } from '../parse.js';
import { convertImage, imageOptions, type ImageConvertOptions, type ImageKeys } from './convert-image.js';
import { printNotes, requireFreeOutput, requireInputFile, requireRawOutputName, requireWholeSectors } from './common.js';
import { checkEncryptedSubformat, encryptedOutputSubformat } from './encrypt.js';

/** The options of one image's conversion (ImageConvertOptions), the key options, and the batch's own. */
export interface ConvertCliOptions extends KeyCliOptions, ImageConvertOptions {
  list?: string;
  /** Images of a batch converted at once (default: defaultJobs()); ignored for one image. */
  jobs?: number;
}

async function isDirectory(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isDirectory(),
    () => false,
  );
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Convert one image on this thread; shared by the single form and a batch without worker threads. */
function convertOne(
  ctx: Ctx,
  keys: ImageKeys,
  item: BatchItem,
  opts: ConvertCliOptions,
  newLockers: () => Promise<LockerSpec[]>,
  progress: string | JobHooks,
): Promise<JobResult | { skipped: true }> {
  return withHooks(ctx, progress, (hooks) => convertImage(item, opts, keys, newLockers, hooks));
}

export async function convertCommand(ctx: Ctx, first: string | undefined, second: string | undefined, opts: ConvertCliOptions): Promise<void> {
  if (opts.encrypt && opts.decrypt) throw usageError('--encrypt and --decrypt contradict each other', 'Give one of them');
  checkRoundsHaveLocker(opts.pbkdf2Rounds, opts.recoveryPassphrase === true, '--recovery-passphrase');
  if (opts.force && opts.skipExisting)
    throw usageError('--force and --skip-existing contradict each other', 'Give --force to replace existing outputs, or --skip-existing to keep them');
  if (opts.encrypt) checkEncryptedSubformat(opts.subformat);
  if (opts.list !== undefined) {
    if (first === undefined || second !== undefined) throw usageError('with --list, give only the output directory: `vmseal convert --list FILE OUTDIR`');
    return convertBatch(ctx, undefined, opts.list, first, opts);
  }
  if (first === undefined || second === undefined)
    throw usageError('convert needs IN and OUT', 'Run `vmseal convert IN OUT --subformat S`, or `vmseal convert --list FILE OUTDIR --subformat S`');
  if (await isDirectory(first)) return convertBatch(ctx, first, undefined, second, opts);

  ctx.doing = `cannot convert ${first}`;
  requireRawOutputName(second, opts.subformat);
  await requireInputFile(first);
  await requireWholeSectors(first, opts.format);
  if (opts.skipExisting && (await exists(second))) {
    ctx.output.result({ ok: true, command: 'convert', input: first, output: second, skipped: true });
    ctx.output.line(`Skipped ${first}: ${second} already exists (--skip-existing)`);
    return;
  }
  await requireFreeOutput(second, opts.force);
  const subformat = opts.encrypt ? await encryptedOutputSubformat(ctx, first, opts.subformat, opts.format) : opts.subformat;
  const one = { ...opts, ...(subformat !== undefined ? { subformat } : {}) };
  const result = (await withKeys(ctx, opts, (keys) =>
    convertOne(ctx, keys, { input: first, output: second }, one, () => keys.newLockers(), 'convert'),
  )) as JobResult;
  ctx.output.result({ ok: true, command: 'convert', ...result });
  ctx.output.line(`Converted ${first} -> ${result.output} (${result.subformat}${result.encrypted ? ', encrypted' : ''})`);
  ctx.output.line(`  ${throughputText(result.bytesProcessed, result.seconds)}`);
  printNotes(ctx, result.notes);
}

async function convertBatch(ctx: Ctx, dir: string | undefined, listFile: string | undefined, outDir: string, opts: ConvertCliOptions): Promise<void> {
  const source = dir ?? listFile!;
  ctx.doing = `cannot convert the images of ${source}`;
  if (opts.subformat === undefined) throw usageError('a batch conversion needs --subformat', 'Add --subformat monolithicSparse (or another; see --help)');
  if (listFile !== undefined) await requireInputFile(listFile, 'the list file');
  const inputs = dir !== undefined ? await listImagesInDirectory(dir) : await readImageList(listFile!);
  if (inputs.length === 0) {
    throw new CliError('ERR_CLI_NO_IMAGES', `${source} names no disk images`, {
      exitCode: ExitCode.FAILURE,
      hint: dir !== undefined ? 'A directory batch takes the .vmdk, .img and .raw files in it' : 'Write one image path per line',
    });
  }
  if ((await stat(outDir).catch(() => undefined))?.isFile())
    throw usageError(`the output ${outDir} is a file, not a directory`, 'Give a directory for the outputs of a batch');
  await mkdir(outDir, { recursive: true });
  // The output folder is listed once here for the staging folders killed jobs left: each image's
  // job then looks among these instead of listing the folder again.
  const items = await withStageListing(planBatch(inputs, outDir, opts.subformat), outDir);

  const jobs = opts.jobs ?? defaultJobs();
  // The main thread converts up to IMAGES_PER_THREAD images at once on its own event loop; more
  // jobs than that run in worker threads (src/cli/batch-pool.ts), so that the JavaScript of the
  // images runs on more cores. Every thread takes its images from the same queue (the main thread
  // also while the workers start).
  const workerScript = jobs > IMAGES_PER_THREAD ? batchWorkerScript() : undefined;
  const plan = planLanes(jobs, items.length, workerScript !== undefined);
  const script = plan.workers.length > 0 ? workerScript : undefined;
  const workers = plan.workers.length;
  // The workers bin/vmseal.js started while the CLI loaded, as many as the plan takes (the others stop).
  const early = claimPrestartedWorkers(workers, script && fileURLToPath(script));
  const started = performance.now();
  const outcome = await withKeys(ctx, opts, async (keys) => {
    // One KEK and one recovery passphrase for the whole batch (each image still gets its own DEK):
    // asked for once, made once, before the first image. Kept as a promise so that images started
    // together wait for the one making them instead of making their own.
    let lockers: Promise<LockerSpec[]> | undefined;
    const newLockers = (): Promise<LockerSpec[]> => (lockers ??= batchLockers(keys));
    const desk = script !== undefined ? new KeyDesk(keys, newLockers) : undefined;
    // One lane of the queue per image a worker converts at once.
    const queue = new BatchQueue(
      items.length,
      plan.workers.reduce((lanes, n) => lanes + n, 0),
    );
    const pool =
      desk && script
        ? new BatchPool(script, plan.workers, { opts: imageOptions(opts), passphraseGiven: keys.passphraseGiven }, desk, items, queue, early)
        : undefined;
    // With workers, the main thread's own images take their keys through the same desk: a KEK is
    // then fetched once, whichever thread asks first.
    const here = desk?.localKeys(keys.passphraseGiven);
    const hereKeys: ImageKeys = here ?? keys;
    const hereLockers = here ? () => here.newLockers() : newLockers;
    const progress = batchProgress(ctx);
    try {
      if (opts.encrypt) await newLockers();
      if (pool) pool.progress = () => progress.hooks();
      const convert: ConvertOne = (item) =>
        convertOne(ctx, hereKeys, item, opts, hereLockers, progress.hooks()).then((r) =>
          'skipped' in r ? { bytes: 0, skipped: true } : { bytes: r.bytesProcessed },
        );
      return await runBatch(items, convert, {
        signal: ctx.signal,
        jobs: plan.here,
        queue,
        ...(pool ? { helpers: pool } : {}),
        onDone: (r, i, n) => ctx.output.line(summaryLine(r, i, n)),
        onNotRun: (item, i, n) => ctx.output.line(`[${i + 1}/${n}] not run ${item.input}: interrupted, its output removed`),
      });
    } finally {
      progress.stop();
      await pool?.close();
      here?.close();
    }
  });
  const wallSeconds = (performance.now() - started) / 1000;

  const failed = outcome.results.filter((r) => !r.ok).length;
  const skipped = outcome.results.filter((r) => r.skipped === true).length;
  const converted = outcome.results.length - failed - skipped;
  const notRun = items.length - outcome.results.length;
  const totalBytes = outcome.results.reduce((s, r) => s + r.bytes, 0);
  ctx.exitCode = batchExitCode(outcome);
  ctx.output.result({
    ok: ctx.exitCode === ExitCode.OK,
    command: 'convert',
    batch: true,
    subformat: opts.subformat,
    images: items.length,
    converted,
    skipped,
    failed,
    notRun,
    interrupted: outcome.interrupted,
    jobs,
    workers,
    bytes: totalBytes,
    seconds: wallSeconds,
    results: outcome.results,
  });
  ctx.output.line(
    `${converted} of ${items.length} image${items.length === 1 ? '' : 's'} converted${skipped > 0 ? `, ${skipped} skipped (existing)` : ''}, ${failed} failed${notRun > 0 ? `, ${notRun} not run (interrupted)` : ''}; ${formatBytes(totalBytes)} in ${formatDuration(wallSeconds)}`,
  );
  if (failed > 0 || outcome.interrupted) {
    ctx.output.error(
      `vmseal: convert: ${failed} of ${items.length} images failed${outcome.interrupted ? ' and the batch was interrupted' : ''}. See the summary above; fix them and run the batch again (add --skip-existing to keep the outputs already written, or --force to replace them).`,
    );
  }
}

/**
 * The batch's lockers: a provider locker under a new KEK (or --key-id) and, if asked, a recovery
 * passphrase. The KEK goes into the session's cache at once, so that the images converted
 * together take it from there instead of each fetching it from the provider.
 */
async function batchLockers(keys: KeySession): Promise<LockerSpec[]> {
  const provider = await keys.newKeyProvider();
  const keyId = keys.options.keyId ?? (await provider.createKey({ name: `vmseal-batch-${new Date().toISOString()}` })).keyId;
  const kek = await provider.getKey(keyId);
  try {
    keys.cache.set(provider, keyId, kek);
  } finally {
    kek.fill(0);
  }
  const lockers: LockerSpec[] = [{ kind: 'provider', provider, keyId }];
  if (keys.options.recoveryPassphrase) lockers.push(await keys.recoveryLocker());
  return lockers;
}

function summaryLine(r: BatchItemResult, index: number, count: number): string {
  const tag = `[${index + 1}/${count}]`;
  if (r.skipped) return `${tag} skipped ${r.input}: ${r.output} exists (--skip-existing)`;
  if (r.ok) return `${tag} ok      ${r.input} -> ${r.output}  ${formatBytes(r.bytes)}  ${formatDuration(r.seconds)}`;
  return `${tag} FAILED  ${r.input}: ${r.error?.reason ?? 'unknown error'} (${r.error?.code ?? '?'})  ${formatDuration(r.seconds)}`;
}
