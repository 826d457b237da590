/**
 * `vmseal backup …`: ciphertext backups in a repository folder (docs/backup.md). No command here
 * takes a key: an encrypted disk is backed up and restored as the ciphertext it is.
 */
import { createBackup, initRepository, listBackups, pruneBackup, restoreBackup, verifyBackup } from '../../backup/index.js';
import type { Ctx } from '../context.js';
import { ExitCode } from '../exit-codes.js';
import { formatBytes, type DiskFormat } from '../parse.js';
import { requireInputFile } from './common.js';

export interface LockWaitOptions {
  /** Seconds to wait for the repository lock (commander gives it parsed). */
  wait?: number;
}

const waitMs = (o: LockWaitOptions): number => (o.wait ?? 0) * 1000;

export async function backupInit(ctx: Ctx, repo: string): Promise<void> {
  ctx.doing = `cannot make the backup repository ${repo}`;
  const r = await initRepository(repo);
  ctx.output.result({ ok: true, command: 'backup init', repository: r.path, id: r.id, chunkSize: r.chunkSize });
  ctx.output.line(`backup repository ${r.path} (id ${r.id})`);
}

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
      ? `read only the chunks changed since point ${r.changeBitmap.base} (change bitmap of vmseal serve)`
      : `read every allocated chunk: ${r.changeBitmap.why}`,
  );
}

export async function backupList(ctx: Ctx, repo: string): Promise<void> {
  ctx.doing = `cannot list the backup repository ${repo}`;
  const r = await listBackups(repo);
  ctx.output.result({ ok: true, command: 'backup list', ...r });
  for (const p of r.points) {
    const tags = [p.name ? `name ${p.name}` : '', p.plain ? 'PLAIN' : '', `history ${p.history}`].filter(Boolean).join(', ');
    ctx.output.line(`${p.id}  ${p.time}  ${p.subformat} ${formatBytes(p.capacity)}  ${p.chunks} chunks (${p.newChunks} new)  ${tags}  ${p.source}`);
  }
  if (r.points.length === 0) ctx.output.line('no points');
}

export async function backupVerify(ctx: Ctx, repo: string, point: string | undefined, opts: LockWaitOptions): Promise<void> {
  ctx.doing = `cannot verify the backup repository ${repo}`;
  const r = await verifyBackup(repo, point, { lockWaitMs: waitMs(opts) });
  if (!r.ok) ctx.exitCode = ExitCode.MISMATCH;
  ctx.output.result({ command: 'backup verify', ...r });
  ctx.output.line(`${r.ok ? 'OK' : 'DAMAGED'}  ${repo}: ${r.points} points, ${r.chunks} chunks (${formatBytes(r.bytes)}) hashed`);
  for (const p of r.problems) ctx.output.line(`  problem${p.point ? ` (point ${p.point})` : ''}: ${p.problem}`);
  if (!r.ok) ctx.output.error(`vmseal: ${ctx.doing}: ${r.problems.length} problems found. Restore the damaged chunks from another copy of the repository.`);
}

export async function backupPrune(ctx: Ctx, repo: string, opts: LockWaitOptions & { keepLast: number }): Promise<void> {
  ctx.doing = `cannot prune the backup repository ${repo}`;
  const r = await pruneBackup(repo, { keepLast: opts.keepLast, lockWaitMs: waitMs(opts) });
  ctx.output.result({ ok: true, command: 'backup prune', ...r });
  ctx.output.line(`removed ${r.removedPoints.length} points and ${r.removedChunks} chunks (${formatBytes(r.freedBytes)}); ${r.keptPoints} points kept`);
}

export async function backupRestore(ctx: Ctx, repo: string, point: string, out: string, opts: LockWaitOptions & { history?: string }): Promise<void> {
  ctx.doing = `cannot restore ${point} from ${repo}`;
  const started = performance.now();
  const r = await restoreBackup(repo, point, out, {
    lockWaitMs: waitMs(opts),
    signal: ctx.signal,
    ...(opts.history !== undefined ? { history: opts.history } : {}),
  });
  const seconds = (performance.now() - started) / 1000;
  ctx.output.result({ ok: true, command: 'backup restore', ...r, seconds });
  ctx.output.line(r.path);
  ctx.output.note(`restored point ${r.point}: ${r.chunks} chunks verified and written (${formatBytes(r.bytesWritten)}) in ${seconds.toFixed(1)} s`);
}
