/**
 * `vmseal decrypt IN OUT [--subformat S | --raw] [--mode OCTAL]`. The output holds the plaintext:
 * its files are 0600 unless --mode says otherwise.
 */
import { decryptDisk } from '../../pipeline/index.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { throughputText, withHooks } from '../jobs.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import type { DiskFormat, Subformat } from '../parse.js';
import { formatOpts, printNotes, requireFreeOutput, requireInputFile, requireRawOutputName } from './common.js';
import { jobTuning } from './encrypt.js';

export interface DecryptCliOptions extends KeyCliOptions {
  subformat?: Subformat;
  raw?: boolean;
  format?: DiskFormat;
  force?: boolean;
  chunkSize?: number;
  threads?: number;
  /** --mode, already parsed from octal by the option's parser. */
  mode?: number;
}

export function plainSubformat(opts: { subformat?: Subformat; raw?: boolean }): Subformat | undefined {
  if (opts.raw && opts.subformat !== undefined && opts.subformat !== 'raw') {
    throw usageError(`--raw and --subformat ${opts.subformat} contradict each other`, 'Give one of them');
  }
  return opts.raw ? 'raw' : opts.subformat;
}

export async function decryptCommand(ctx: Ctx, input: string, output: string, opts: DecryptCliOptions): Promise<void> {
  ctx.doing = `cannot decrypt ${input}`;
  const subformat = plainSubformat(opts);
  requireRawOutputName(output, subformat);
  await requireInputFile(input);
  await requireFreeOutput(output, opts.force);
  const result = await withKeys(ctx, opts, async (keys) => {
    const unlock = await keys.unlockOptions(input, formatOpts(opts.format));
    return withHooks(ctx, 'decrypt', (hooks) =>
      decryptDisk(input, output, {
        ...jobTuning(opts),
        ...formatOpts(opts.format),
        signal: hooks.signal,
        onProgress: hooks.onProgress,
        keys: unlock,
        ...(subformat !== undefined ? { subformat } : {}),
        ...(opts.mode !== undefined ? { mode: opts.mode } : {}),
      }),
    );
  });
  ctx.output.result({ ok: true, command: 'decrypt', ...result });
  ctx.output.line(`Decrypted ${input} -> ${result.output} (${result.subformat})`);
  ctx.output.line(`  ${throughputText(result.bytesProcessed, result.seconds)}`);
  printNotes(ctx, result.notes);
}
