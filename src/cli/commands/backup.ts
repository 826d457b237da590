/**
 * `vmseal backup …`: ciphertext backups in a repository folder (docs/backup.md). No command here
 * takes a key, but a restore at another site (--rewrap-to, --new-dek): an encrypted disk is backed up
 * and restored as the ciphertext it is.
 */
import {
  initRepository,
  listBackups,
  pruneBackup,
  restoreBackup,
  restoreBackupOver,
  rewrapBackup,
  verifyBackup,
  type RestoreBackupOptions,
} from '../../backup/index.js';
import { usageError } from '../errors.js';
import type { Ctx } from '../context.js';
import { ExitCode } from '../exit-codes.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import { formatBytes, type KeyProviderKind } from '../parse.js';
import { requireInputFile } from './input-file.js';
// `backup create` is a module of its own (program.ts imports it alone): see ./backup-create.ts.
import { waitMs, type LockWaitOptions } from './backup-create.js';

export async function backupInit(ctx: Ctx, repo: string): Promise<void> {
  ctx.doing = `cannot make the backup repository ${repo}`;
  const r = await initRepository(repo);
  ctx.output.result({ ok: true, command: 'backup init', repository: r.path, id: r.id, chunkSize: r.chunkSize });
  ctx.output.line(`backup repository ${r.path} (id ${r.id})`);
}

export async function backupList(ctx: Ctx, repo: string): Promise<void> {
  ctx.doing = `cannot list the backup repository ${repo}`;
  const r = await listBackups(repo);
  ctx.output.result({ ok: true, command: 'backup list', ...r });
  for (const p of r.points) {
    const tags = [p.name ? `name ${p.name}` : '', p.plain ? 'PLAIN' : '', p.chainLayers ? `chain of ${p.chainLayers} layers` : '', `history ${p.history}`]
      .filter(Boolean)
      .join(', ');
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

export async function backupPrune(
  ctx: Ctx,
  repo: string,
  opts: LockWaitOptions & { keepLast?: number; beforeRekey?: boolean; plain?: boolean },
): Promise<void> {
  if (opts.keepLast === undefined && opts.beforeRekey !== true && opts.plain !== true)
    throw usageError('no prune rule given', 'Give --keep-last N, --before-rekey or --plain (or several)');
  ctx.doing = `cannot prune the backup repository ${repo}`;
  const r = await pruneBackup(repo, {
    lockWaitMs: waitMs(opts),
    ...(opts.keepLast !== undefined ? { keepLast: opts.keepLast } : {}),
    ...(opts.beforeRekey === true ? { beforeRekey: true } : {}),
    ...(opts.plain === true ? { plain: true } : {}),
  });
  ctx.output.result({ ok: true, command: 'backup prune', ...r });
  ctx.output.line(`removed ${r.removedPoints.length} points and ${r.removedChunks} chunks (${formatBytes(r.freedBytes)}); ${r.keptPoints} points kept`);
}

export interface BackupRestoreCliOptions extends LockWaitOptions, KeyCliOptions {
  history?: string;
  /** Seal the DEK for a new KEK of this provider instead of the point's lockers. */
  rewrapTo?: KeyProviderKind;
  newDek?: boolean;
  /** Roll this disk back to the point instead of writing a new one. */
  over?: string;
}

export async function backupRestore(ctx: Ctx, repo: string, point: string, out: string | undefined, opts: BackupRestoreCliOptions): Promise<void> {
  if (opts.over !== undefined) return backupRollback(ctx, repo, point, out, opts.over, opts);
  if (out === undefined)
    throw usageError('no OUT given (a new disk to write), and no --over DISK (a disk to roll back)', 'e.g. `vmseal backup restore REPO latest restored.vmdk`');
  ctx.doing = `cannot restore ${point} from ${repo}`;
  const started = performance.now();
  const base: RestoreBackupOptions = {
    lockWaitMs: waitMs(opts),
    signal: ctx.signal,
    ...(opts.history !== undefined ? { history: opts.history } : {}),
  };
  const r =
    opts.rewrapTo === undefined && opts.newDek !== true
      ? await restoreBackup(repo, point, out, base)
      : await withKeys(ctx, opts, async (keys) => {
          // The new KEK is made on the destination's provider; the point's KeySafe names the providers that unlock it.
          const provider = opts.rewrapTo === undefined ? undefined : opts.rewrapTo === 'kmip' ? await keys.kmip() : await keys.local();
          return restoreBackup(repo, point, out, {
            ...base,
            keys: (keySafe) => keys.unlockOptions(undefined, { keySafe }),
            cache: keys.cache,
            ...(provider ? { rewrapTo: [{ kind: 'provider' as const, provider }] } : {}),
            ...(opts.newDek === true ? { newDek: true } : {}),
          });
        });
  const seconds = (performance.now() - started) / 1000;
  ctx.output.result({ ok: true, command: 'backup restore', ...r, seconds });
  ctx.output.line(r.path);
  const keyed = r.newDek ? ', re-encrypted under a new disk key' : r.rewrapped ? `, its key sealed for the ${opts.rewrapTo} key provider` : '';
  ctx.output.note(`restored point ${r.point}: ${r.chunks} chunks verified and written (${formatBytes(r.bytesWritten)})${keyed} in ${seconds.toFixed(1)} s`);
}

/** `backup restore REPO POINT --over DISK`: quick rollback (only the changed chunks are written; no key). */
async function backupRollback(ctx: Ctx, repo: string, point: string, out: string | undefined, disk: string, opts: BackupRestoreCliOptions): Promise<void> {
  if (out !== undefined) throw usageError('--over DISK rolls DISK back in place: give no OUT with it', 'Drop OUT, or drop --over to write a new disk');
  if (opts.rewrapTo !== undefined || opts.newDek === true)
    throw usageError('--rewrap-to and --new-dek make a new disk: they do not go with --over', 'Restore to a new OUT to change the keys');
  ctx.doing = `cannot roll ${disk} back to ${point} from ${repo}`;
  await requireInputFile(disk, 'the disk');
  ctx.interruptNote = `run \`vmseal resume ${disk}\` to finish the rollback`;
  const started = performance.now();
  const r = await restoreBackupOver(repo, point, disk, {
    lockWaitMs: waitMs(opts),
    signal: ctx.signal,
    ...(opts.history !== undefined ? { history: opts.history } : {}),
  });
  const seconds = (performance.now() - started) / 1000;
  ctx.output.result({ ok: true, command: 'backup restore', over: true, ...r, seconds });
  ctx.output.line(r.path);
  ctx.output.note(
    `rolled ${r.path} back to point ${r.point}: ${r.chunksWritten} chunks written (${formatBytes(r.bytesWritten)}), ${r.chunksSame} unchanged, in ${seconds.toFixed(1)} s`,
  );
}

/** `backup rewrap REPO --remove-locker WHICH`: every point's KeySafe without those lockers (needs a key that opens them). */
export async function backupRewrap(ctx: Ctx, repo: string, opts: LockWaitOptions & KeyCliOptions & { removeLocker: string }): Promise<void> {
  ctx.doing = `cannot rewrap the points of ${repo}`;
  const r = await withKeys(ctx, opts, (keys) =>
    rewrapBackup(repo, {
      removeLocker: opts.removeLocker,
      keys: (keySafe) => keys.unlockOptions(undefined, { keySafe }),
      lockWaitMs: waitMs(opts),
    }),
  );
  ctx.output.result({ ok: true, command: 'backup rewrap', ...r });
  ctx.output.line(`removed ${opts.removeLocker} from ${r.rewrittenPoints.length} points; ${r.unchangedPoints} points had none`);
}
