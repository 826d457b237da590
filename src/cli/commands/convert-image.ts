/**
 * One image's conversion, the same whether it runs on the main thread (one image, `--jobs 1`) or
 * in a batch worker thread: the output-exists check, the keys it needs (none for a ciphertext copy),
 * and the pipeline job.
 */
import { stat } from 'node:fs/promises';
import { readEncryptionParams } from '../../disk/index.js';
import { formatByName } from '../../vmdk/open.js';
import type { KeyCache, LockerSpec, UnlockOptions } from '../../keys/index.js';
import { convertDisk, convertNeedsKeys, type JobResult } from '../../pipeline/index.js';
import type { BatchItem } from '../batch.js';
import { CliError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';
import type { JobHooks } from '../jobs.js';
import type { CipherName, DiskFormat, Subformat, UnitSize } from '../parse.js';
import { formatOpts } from './common.js';
import { jobTuning } from './encrypt.js';

/** The options of `vmseal convert` that shape one image's job (no key options: those are the ImageKeys' business). */
export interface ImageConvertOptions {
  subformat?: Subformat;
  format?: DiskFormat;
  encrypt?: boolean;
  decrypt?: boolean;
  cipher: CipherName;
  unitSize: UnitSize;
  force?: boolean;
  skipExisting?: boolean;
  chunkSize?: number;
  threads?: number;
}

/**
 * Where an image's keys come from: the command's KeySession on the main thread, or in a batch
 * worker the bridge that asks the main thread's session (src/cli/key-bridge.ts).
 */
export interface ImageKeys {
  /** Whether a recovery passphrase was given (then an encrypted input is unlocked with it too). */
  readonly passphraseGiven: boolean;
  /** KEKs fetched for this session (new DEKs are sealed under the batch's KEK from here). */
  readonly cache: KeyCache;
  unlockOptions(disk: string, opts: { usePassphrase?: boolean; format?: 'vmdk' | 'raw' }): Promise<UnlockOptions>;
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function isEncrypted(path: string, format: DiskFormat | undefined): Promise<boolean> {
  // A file read as a raw image by its name (.img, .raw) or --format raw is never encrypted: known
  // without opening it, which would cost an image of a batch four file-system round trips (open,
  // fstat, statfs, close) before its conversion opens it again.
  if (formatByName(path, format) === 'raw') return false;
  // An unreadable file is "not encrypted" here; the conversion itself reports why it fails.
  return (await readEncryptionParams(path, formatOpts(format)).catch(() => null)) !== null;
}

/** Convert one image; `hooks` carry its abort signal and take its progress. */
export async function convertImage(
  item: BatchItem,
  opts: ImageConvertOptions,
  keys: ImageKeys,
  newLockers: () => Promise<LockerSpec[]>,
  hooks: Pick<JobHooks, 'signal' | 'onProgress'>,
): Promise<JobResult | { skipped: true }> {
  // An existing output is skipped (--skip-existing), or refused before keys are asked for an
  // encrypted input (a KMS round trip, a passphrase check), so that a re-run batch says what to do
  // per image. For a plain input the conversion's own check refuses it with the same code
  // (ERR_OUTPUT_EXISTS) before it writes anything: looking here too would cost every image one more
  // file-system round trip. With --skip-existing the two look-ups run together.
  const skipping = !opts.force && opts.skipExisting === true;
  const [encryptedInput, existing] = await Promise.all([isEncrypted(item.input, opts.format), skipping ? exists(item.output) : Promise.resolve(false)]);
  if (existing || (!opts.force && !skipping && encryptedInput && (await exists(item.output)))) {
    if (opts.skipExisting) return { skipped: true };
    throw new CliError('ERR_OUTPUT_EXISTS', `the output ${item.output} already exists`, {
      exitCode: ExitCode.FAILURE,
      hint: 'Choose another output name, add --force to replace it, or --skip-existing to keep it',
    });
  }
  // Keys are asked for (a passphrase prompt, a KMS round trip) only when the job will use them: a
  // convert that keeps the encryption and copies the ciphertext as it is needs none, so it runs with
  // the KMS down or no passphrase at hand. convertNeedsKeys is the job's own rule, so the two agree;
  // it is not asked (it opens the input) when --encrypt or --decrypt say the answer: keys, always.
  const needsKeys =
    encryptedInput &&
    (opts.encrypt === true ||
      opts.decrypt === true ||
      (await convertNeedsKeys(item.input, { ...formatOpts(opts.format), ...(opts.subformat !== undefined ? { subformat: opts.subformat } : {}) })));
  const unlock = needsKeys
    ? await keys.unlockOptions(item.input, { usePassphrase: keys.passphraseGiven && !opts.encrypt, ...formatOpts(opts.format) })
    : undefined;
  const encrypt = opts.encrypt ? { lockers: await newLockers(), cipher: opts.cipher, unitSize: opts.unitSize, cache: keys.cache } : undefined;
  return convertDisk(item.input, item.output, {
    ...jobTuning(opts),
    ...formatOpts(opts.format),
    signal: hooks.signal,
    onProgress: hooks.onProgress,
    ...(opts.subformat !== undefined ? { subformat: opts.subformat } : {}),
    ...(unlock ? { keys: unlock } : {}),
    ...(encrypt ? { encrypt } : {}),
    ...(opts.decrypt ? { decrypt: true } : {}),
    ...(item.stages !== undefined ? { folderEntries: item.stages } : {}),
  });
}

/** The image options of a `vmseal convert` command line (what a batch worker is given). */
export function imageOptions(opts: ImageConvertOptions): ImageConvertOptions {
  const { subformat, format, encrypt, decrypt, cipher, unitSize, force, skipExisting, chunkSize, threads } = opts;
  const picked = { subformat, format, encrypt, decrypt, cipher, unitSize, force, skipExisting, chunkSize, threads };
  return Object.fromEntries(Object.entries(picked).filter(([, v]) => v !== undefined)) as unknown as ImageConvertOptions;
}
