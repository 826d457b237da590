/**
 * `vmseal snapshot create|list|revert DISK`: snapshot chains of VMDK disks (docs/vmdk.md, "Snapshot
 * chains"). DISK is any layer's path: create adds a child on it, list shows the chain ending at it,
 * revert replaces it (a child) by a new empty one, commit merges it (a child) into its parent.
 * Encrypted disks need their keys for create, revert and commit (the child's authenticator, the
 * parent's data check and the commit journal are made with the DEK); list needs none.
 */
import { createEncryptedSnapshot, readEncryptionParams, revertEncryptedSnapshot } from '../../disk/index.js';
import { ChainDisk, createSnapshot, openDisk as openVmdk, revertSnapshot, type VirtualDisk } from '../../vmdk/index.js';
import { parseEncryption } from '../../disk/params.js';
import type { Ctx } from '../context.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import { hasJournal, requireInputFile } from './common.js';
import { commitSnapshot } from '../../pipeline/index.js';
import { withHooks } from '../jobs.js';
import type { UnlockOptions } from '../../pipeline/options.js';

export interface SnapshotLayer {
  path: string;
  cid: string | undefined;
  parentCid: string | undefined;
  encrypted: boolean;
  layerId?: string;
  parentLayerId?: string;
}

/** The layers of the chain ending at `disk`, top first (a base disk alone is a chain of one). */
export async function chainLayers(disk: string): Promise<SnapshotLayer[]> {
  const d = await openVmdk(disk, { readOnly: true, allowEncrypted: true });
  try {
    const layers: VirtualDisk[] = d instanceof ChainDisk ? d.layers() : [d];
    return layers.map((l) => {
      const desc = l.descriptor;
      const enc = desc ? parseEncryption(desc.entries(), l.path)?.params : undefined;
      const parentCid = desc?.get('parentCID');
      return {
        path: l.path,
        cid: desc?.get('CID'),
        parentCid: parentCid === undefined || parentCid.toLowerCase() === 'ffffffff' ? undefined : parentCid,
        encrypted: enc !== undefined,
        ...(enc?.layerId !== undefined ? { layerId: enc.layerId } : {}),
        ...(enc?.parentLayerId !== undefined ? { parentLayerId: enc.parentLayerId } : {}),
      };
    });
  } finally {
    await d.close();
  }
}

export async function snapshotCreate(ctx: Ctx, disk: string, opts: KeyCliOptions & { name?: string }): Promise<void> {
  ctx.doing = `cannot take a snapshot of ${disk}`;
  await requireInputFile(disk, 'the disk');
  const name = opts.name !== undefined ? { name: opts.name } : {};
  const encrypted = (await readEncryptionParams(disk)) !== null;
  const child = encrypted
    ? await withKeys(ctx, opts, async (keys) => createEncryptedSnapshot(disk, { keys: await keys.unlockOptions(disk), ...name }))
    : await createSnapshot(disk, name);
  ctx.output.result({ ok: true, command: 'snapshot create', disk, top: child });
  ctx.output.line(child);
}

export async function snapshotList(ctx: Ctx, disk: string): Promise<void> {
  ctx.doing = `cannot list the snapshots of ${disk}`;
  await requireInputFile(disk, 'the disk');
  const layers = await chainLayers(disk);
  ctx.output.result({ ok: true, command: 'snapshot list', layers });
  ctx.output.table(layerRows(layers));
}

/** One row per layer, top first: the path, then CID (and the parent's it was made on). */
export function layerRows(layers: readonly SnapshotLayer[]): Array<[string, string]> {
  return layers.map((l, i) => {
    const role = i === 0 ? (layers.length > 1 ? 'top' : 'disk') : i === layers.length - 1 ? 'base' : `layer ${i}`;
    const cid = `CID ${l.cid ?? '-'}${l.parentCid ? `, made on ${l.parentCid}` : ''}${l.encrypted ? ', encrypted' : ''}`;
    return [role, `${l.path} (${cid})`];
  });
}

export async function snapshotRevert(ctx: Ctx, disk: string, opts: KeyCliOptions): Promise<void> {
  ctx.doing = `cannot revert ${disk}`;
  await requireInputFile(disk, 'the disk');
  const encrypted = (await readEncryptionParams(disk)) !== null;
  const top = encrypted
    ? await withKeys(ctx, opts, async (keys) => revertEncryptedSnapshot(disk, { keys: await keys.unlockOptions(disk) }))
    : await revertSnapshot(disk);
  ctx.output.result({ ok: true, command: 'snapshot revert', top });
  ctx.output.line(`Reverted ${top}: the changes since the snapshot are discarded`);
}

export async function snapshotCommit(ctx: Ctx, disk: string, opts: KeyCliOptions): Promise<void> {
  ctx.doing = `cannot commit ${disk}`;
  // A killed commit may have removed the child's files already: its journal is enough to finish it.
  const journal = hasJournal(disk);
  if (!journal) await requireInputFile(disk, 'the disk');
  // The child's own lines (its parent may be half merged by a killed commit): keys only for an encrypted chain.
  const layer = await openVmdk(disk, { readOnly: true, allowEncrypted: true, layerOnly: true }).catch(() => undefined);
  const encrypted = layer ? (layer.descriptor?.isEncrypted() ?? false) : journal;
  await layer?.close();
  const run = (keys: UnlockOptions | undefined) =>
    withHooks(ctx, 'snapshot commit', (hooks) => commitSnapshot(disk, { ...(keys ? { keys } : {}), signal: hooks.signal, onProgress: hooks.onProgress }));
  const done = encrypted ? await withKeys(ctx, opts, async (keys) => run(await keys.unlockOptions(disk))) : await run(undefined);
  ctx.output.result({
    ok: true,
    command: 'snapshot commit',
    top: done.top,
    removed: done.removed,
    bytesMoved: done.bytesMoved,
    ...(done.resumed ? { resumed: true } : {}),
  });
  ctx.output.line(`Committed ${done.removed} into ${done.top}: ${done.top} is the top now`);
}
