/**
 * `vmseal resume DISK`: finish an interrupted --in-place encrypt or deep rekey from its journal.
 */
import { resumeDisk } from '../../pipeline/index.js';
import type { Ctx } from '../context.js';
import { throughputText, withHooks } from '../jobs.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import { formatOpts, hasJournal, requireInputFile } from './common.js';
import { reportRotation } from './rekey.js';

export async function resumeCommand(ctx: Ctx, disk: string, opts: KeyCliOptions & { trustV1Journal?: boolean; format?: 'vmdk' | 'raw' }): Promise<void> {
  ctx.doing = `cannot resume the job on ${disk}`;
  // A killed snapshot commit may have removed the child's files already: its journal is enough.
  if (!hasJournal(disk)) await requireInputFile(disk, 'the disk');
  const result = await withKeys(ctx, opts, async (keys) => {
    const unlock = await keys.unlockOptions(disk, formatOpts(opts.format));
    return withHooks(ctx, 'resume', (hooks) =>
      resumeDisk(disk, {
        ...formatOpts(opts.format),
        signal: hooks.signal,
        onProgress: hooks.onProgress,
        keys: unlock,
        cache: keys.cache,
        ...(opts.trustV1Journal ? { trustV1Journal: true } : {}),
      }),
    );
  });
  if (result === null) {
    ctx.output.result({ ok: true, command: 'resume', resumed: false, path: disk });
    ctx.output.line(`Nothing to resume: no interrupted job on ${disk}`);
    return;
  }
  ctx.output.result({ ok: true, command: 'resume', ...result, resumed: true });
  ctx.output.line(`Finished the interrupted ${result.operation} of ${disk}`);
  ctx.output.line(`  ${throughputText(result.bytesProcessed, result.seconds)}`);
  reportRotation(ctx, result);
}
