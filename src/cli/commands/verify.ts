/**
 * `vmseal verify DISK [--against PLAIN] [--sha256]`: read the data, check the metadata, compare hashes.
 * A mismatch is not an exception: the report is printed and the exit code is 6.
 */
import { readEncryptionParams } from '../../disk/index.js';
import { verifyDisk } from '../../pipeline/index.js';
import type { Ctx } from '../context.js';
import { ExitCode } from '../exit-codes.js';
import { throughputText, withHooks } from '../jobs.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import type { DiskFormat } from '../parse.js';
import { formatOpts, requireInputFile } from './common.js';

export interface VerifyCliOptions extends KeyCliOptions {
  against?: string;
  format?: DiskFormat;
  againstFormat?: DiskFormat;
  sha256?: boolean;
}

export async function verifyCommand(ctx: Ctx, disk: string, opts: VerifyCliOptions): Promise<void> {
  ctx.doing = `cannot verify ${disk}`;
  await requireInputFile(disk, 'the disk');
  if (opts.against !== undefined) await requireInputFile(opts.against, 'the plain image');
  const started = performance.now();
  const result = await withKeys(ctx, opts, async (keys) => {
    const format = formatOpts(opts.format);
    const againstFormat = formatOpts(opts.againstFormat);
    const encrypted = (await readEncryptionParams(disk, format).catch(() => null)) !== null;
    const againstEncrypted = opts.against !== undefined && (await readEncryptionParams(opts.against, againstFormat).catch(() => null)) !== null;
    return withHooks(ctx, 'verify', async (hooks) =>
      verifyDisk(disk, {
        signal: hooks.signal,
        onProgress: hooks.onProgress,
        ...format,
        ...(opts.sha256 === true ? { sha256: true } : {}),
        ...(opts.againstFormat !== undefined ? { againstFormat: opts.againstFormat } : {}),
        ...(encrypted ? { keys: await keys.unlockOptions(disk, format) } : {}),
        ...(opts.against !== undefined ? { against: opts.against } : {}),
        ...(againstEncrypted ? { againstKeys: await keys.unlockOptions(opts.against, againstFormat) } : {}),
      }),
    );
  });
  const seconds = (performance.now() - started) / 1000;
  if (!result.ok) ctx.exitCode = ExitCode.MISMATCH;
  ctx.output.result({ command: 'verify', ...result, seconds });
  ctx.output.line(`${result.ok ? 'OK' : 'MISMATCH'}  ${disk}${result.encrypted ? ' (encrypted)' : ''}`);
  ctx.output.line(`  content ${result.contentHash}`);
  if (result.sha256 !== undefined) ctx.output.line(`  sha256  ${result.sha256}`);
  if (result.againstContentHash !== undefined) ctx.output.line(`  content ${result.againstContentHash} of ${opts.against}`);
  if (result.againstSha256 !== undefined) ctx.output.line(`  sha256  ${result.againstSha256} of ${opts.against}`);
  for (const p of result.problems) ctx.output.line(`  problem: ${p}`);
  ctx.output.line(`  read ${throughputText(result.bytesRead, seconds)}`);
  if (!result.ok) {
    const why =
      result.problems.length > 0
        ? result.problems.join('; ')
        : result.firstMismatch !== undefined
          ? `its content differs from ${opts.against} first at byte ${result.firstMismatch}`
          : 'the check failed';
    const todo =
      opts.against !== undefined
        ? `Check that ${opts.against} is the image ${disk} was made from; if it is, ${disk} is damaged: restore it from a backup`
        : 'The disk is damaged; restore it from a backup';
    ctx.output.error(`vmseal: verify ${disk}: ${why}. ${todo}.`);
  }
}
