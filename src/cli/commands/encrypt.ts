/**
 * `vmseal encrypt IN OUT` and `vmseal encrypt IN --in-place`.
 */
import { UNENCRYPTABLE_SUBFORMATS, canEncryptSubformat, encryptedSubformatFor } from '../../disk/params.js';
import { encryptDisk, encryptInPlace, inspectDisk, type JobResult } from '../../pipeline/index.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { throughputText, withHooks } from '../jobs.js';
import { checkRoundsHaveLocker, withKeys, type KeyCliOptions } from '../key-session.js';
import type { CipherName, DiskFormat, Subformat, UnitSize } from '../parse.js';
import { formatOpts, lockersOf, lockerJson, lockerText, printNotes, requireFreeOutput, requireInputFile, requireWholeSectors } from './common.js';

export interface EncryptCliOptions extends KeyCliOptions {
  trustV1Journal?: boolean;
  subformat?: Subformat;
  format?: DiskFormat;
  cipher: CipherName;
  unitSize: UnitSize;
  inPlace?: boolean;
  force?: boolean;
  chunkSize?: number;
  threads?: number;
}

/** Refuse encrypted output formats that cannot be encrypted (before any key is made). */
export function checkEncryptedSubformat(subformat: Subformat | undefined): void {
  if (subformat === undefined || canEncryptSubformat(subformat)) return;
  if (subformat === 'raw') {
    throw usageError(
      'an encrypted disk cannot be written as raw (the encryption parameters live in the VMDK descriptor)',
      'Use --subformat monolithicFlat: its extent is a raw image of aes-xts-plain64 ciphertext',
    );
  }
  if (subformat === 'streamOptimized') {
    throw usageError(
      'an encrypted disk cannot be written as streamOptimized (compressing ciphertext gains nothing; vSphere refuses to export encrypted disks too)',
      'Use monolithicSparse or monolithicFlat, or decrypt first',
    );
  }
  throw usageError(
    `an encrypted disk cannot be written as ${subformat} (${UNENCRYPTABLE_SUBFORMATS.get(subformat) ?? 'unsupported'})`,
    'Use monolithicSparse or monolithicFlat, or decrypt first',
  );
}

/**
 * The subformat of an encrypted output when none was asked for: the input's, except that a
 * streamOptimized input (which an encrypted disk cannot be) becomes monolithicSparse.
 */
export async function encryptedOutputSubformat(ctx: Ctx, input: string, asked: Subformat | undefined, format?: DiskFormat): Promise<Subformat | undefined> {
  if (asked !== undefined) return asked;
  const info = await inspectDisk(input, formatOpts(format)).catch(() => undefined);
  // A raw input is left to the pipeline, which quietly writes monolithicFlat (the same bytes, encrypted).
  if (info === undefined || info.format === 'raw' || canEncryptSubformat(info.subformat)) return undefined;
  const replacement = encryptedSubformatFor(info.subformat) as Subformat;
  ctx.output.note(`Note: ${input} is ${info.subformat}, which an encrypted disk cannot be: writing ${replacement} (choose with --subformat).`);
  return replacement;
}

export function jobTuning(opts: { chunkSize?: number; threads?: number; force?: boolean; trustV1Journal?: boolean }): {
  chunkSize?: number;
  threads?: number;
  force?: boolean;
  trustV1Journal?: boolean;
} {
  return {
    ...(opts.trustV1Journal ? { trustV1Journal: true } : {}),
    ...(opts.chunkSize !== undefined ? { chunkSize: opts.chunkSize } : {}),
    ...(opts.threads !== undefined ? { threads: opts.threads } : {}),
    ...(opts.force !== undefined ? { force: opts.force } : {}),
  };
}

export async function encryptCommand(ctx: Ctx, input: string, output: string | undefined, opts: EncryptCliOptions): Promise<void> {
  ctx.doing = `cannot encrypt ${input}`;
  checkRoundsHaveLocker(opts.pbkdf2Rounds, opts.recoveryPassphrase === true, '--recovery-passphrase');
  if (opts.inPlace) {
    if (output !== undefined) throw usageError('--in-place encrypts IN itself: give no OUT', 'Drop OUT, or drop --in-place to write a new image');
    if (opts.subformat !== undefined) throw usageError('--in-place keeps the subformat: --subformat cannot be given with it');
    if (opts.format === 'raw')
      throw usageError(
        'a raw image cannot be encrypted in place (it has no descriptor to carry the key)',
        'Drop --in-place and give OUT: `vmseal encrypt IN OUT --format raw`',
      );
  } else if (output === undefined) {
    throw usageError('encrypt needs OUT (or --in-place)', 'Run `vmseal encrypt IN OUT`, or `vmseal encrypt IN --in-place`');
  }
  checkEncryptedSubformat(opts.subformat);
  await requireInputFile(input);
  await requireWholeSectors(input, opts.format);
  if (output !== undefined) await requireFreeOutput(output, opts.force);
  const subformat = output !== undefined ? await encryptedOutputSubformat(ctx, input, opts.subformat, opts.format) : undefined;

  if (opts.inPlace) ctx.interruptNote = `run \`vmseal resume ${input}\` (or this command again) to finish`;
  let newHome: string | undefined;
  const result: JobResult = await withKeys(ctx, opts, async (keys) => {
    const lockers = await keys.newLockers();
    newHome = keys.newKeystoreHome;
    return withHooks(ctx, 'encrypt', (hooks) => {
      const common = {
        ...jobTuning(opts),
        ...formatOpts(opts.format),
        signal: hooks.signal,
        onProgress: hooks.onProgress,
        lockers,
        cipher: opts.cipher,
        unitSize: opts.unitSize,
        cache: keys.cache,
      };
      return output === undefined
        ? encryptInPlace(input, common)
        : encryptDisk(input, output, { ...common, ...(subformat !== undefined ? { subformat } : {}) });
    });
  });

  // The output of a job is a VMDK whatever its name (an encrypted disk always is).
  const lockers = await lockersOf(result.output, 'vmdk');
  ctx.output.result({ ok: true, command: 'encrypt', ...result, cipher: opts.cipher, unitSize: opts.unitSize, lockers: lockers.map(lockerJson) });
  ctx.output.line(
    `Encrypted ${input}${output !== undefined ? ` -> ${result.output}` : ' in place'} (${result.subformat}, ${opts.cipher}, ${opts.unitSize}-byte units)`,
  );
  for (const l of lockers) ctx.output.line(`  locked by ${lockerText(l)}`);
  ctx.output.line(`  ${throughputText(result.bytesProcessed, result.seconds)}`);
  printNotes(ctx, result.notes);
  if (newHome !== undefined) {
    ctx.output.note(
      `Note: created a new local keystore in ${newHome} for the disk's key. Back it up (\`vmseal keys backup FILE\`): without it, the disk opens only with a recovery passphrase.`,
    );
  }
}
