/**
 * `vmseal backup create`: a module of its own, imported alone when that command runs. An
 * incremental backup with the change bitmap of `vmseal serve` reads a few chunks, so the process's
 * start-up is most of its time: this module imports only the backup layer's create path, not the
 * restore, rewrap and prune paths (the pipeline, the key providers) that ./backup.ts needs.
 */
import { createBackup } from '../../backup/create.js';
import type { Ctx } from '../context.js';
import { formatBytes, type DiskFormat } from '../parse.js';
import { requireInputFile } from './input-file.js';

export interface LockWaitOptions {
  /** Seconds to wait for the repository lock (commander gives it parsed). */
  wait?: number;
}

export const waitMs = (o: LockWaitOptions): number => (o.wait ?? 0) * 1000;

export async function backupCreate(
  ctx: Ctx,
  disk: string,
  repo: string,
  opts: LockWaitOptions & { name?: string; history?: string; allowPlain?: boolean; format?: DiskFormat },
): Promise<void> {
  ctx.doing = `cannot back up ${disk}`;
  await requireInputFile(disk, 'the disk');
  const started = performance.now();
  const r = await createBackup(disk, repo, {
    lockWaitMs: waitMs(opts),
    signal: ctx.signal,
    ...(opts.name !== undefined ? { name: opts.name } : {}),
    ...(opts.history !== undefined ? { history: opts.history } : {}),
    ...(opts.allowPlain === true ? { allowPlain: true } : {}),
    ...(opts.format !== undefined ? { format: opts.format } : {}),
  });
  const seconds = (performance.now() - started) / 1000;
  ctx.output.result({ ok: true, command: 'backup create', ...r, seconds });
  ctx.output.line(r.point);
  ctx.output.note(
    `backed up ${disk}${r.plain ? ' (PLAIN: its chunks hold plaintext)' : ''}: ${r.chunks} chunks, ${r.newChunks} new (${formatBytes(r.newBytes)}), read ${r.chunksRead} chunks (${formatBytes(r.bytesRead)}) in ${seconds.toFixed(1)} s; history ${r.history}${r.parent ? `, after ${r.parent}` : ''}`,
  );
  ctx.output.note(
    r.changeBitmap.used
      ? `read only the chunks changed since point ${r.changeBitmap.base} (its change bitmap, kept by vmseal serve or a trackChanges writer)`
      : `read every allocated chunk: ${r.changeBitmap.why}`,
  );
}
