/**
 * `vmseal repair --reseal-data-check DISK`: recompute the data check of an encrypted disk from its
 * data and write it (keys required). The way out after a crash tore a write of unit 0; it trusts
 * the data, so it is a separate, explicit command and never done implicitly.
 */
import { resealDataCheck } from '../../disk/index.js';
import { acquireLock } from '../../pipeline/lock.js';
import { realDiskPath } from '../../pipeline/paths.js';
import type { Ctx } from '../context.js';
import { usageError } from '../errors.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import { requireInputFile } from './common.js';

export interface RepairCliOptions extends KeyCliOptions {
  resealDataCheck?: boolean;
}

export async function repairCommand(ctx: Ctx, disk: string, opts: RepairCliOptions): Promise<void> {
  ctx.doing = `cannot repair ${disk}`;
  // One repair exists today; naming it keeps a later one from running by surprise.
  if (!opts.resealDataCheck) throw usageError('say what to repair', 'Give --reseal-data-check');
  await requireInputFile(disk, 'the disk');
  // Exclusive, like any job that rewrites a disk: not while a job, qemu or a VM has it.
  const lock = await acquireLock(await realDiskPath(disk), 'repair');
  let result;
  try {
    result = await withKeys(ctx, opts, async (keys) => resealDataCheck(disk, { keys: await keys.unlockOptions(disk) }));
  } finally {
    await lock.release();
  }
  ctx.output.result({ ok: true, command: 'repair', ...result });
  ctx.output.line(`Resealed the data check of ${disk}${result.previousFormatVersion < 2 ? ' (format version 1 -> 2: it had none)' : ''}`);
  if (result.previous !== undefined && result.previous !== result.dataCheck) ctx.output.line(`  was ${result.previous}`);
  ctx.output.line(`  now ${result.dataCheck}`);
}
