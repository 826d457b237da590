/**
 * `vmseal info DISK`: what the disk is, like `qemu-img info`, plus its encryption and whether the
 * keys at hand (local keystore, --kms, a given recovery passphrase) unlock it now.
 */
import { readEncryptionParams } from '../../disk/open.js';
import { inspectDisk, type DiskInfo } from '../../pipeline/inspect.js';
import type { Ctx } from '../context.js';
import { withKeys, type KeyCliOptions } from '../key-session.js';
import { formatBytes, type DiskFormat } from '../parse.js';
import { formatOpts, lockerText, requireInputFile } from './common.js';

export async function infoCommand(ctx: Ctx, disk: string, opts: KeyCliOptions & { format?: DiskFormat }): Promise<void> {
  ctx.doing = `cannot inspect ${disk}`;
  await requireInputFile(disk, 'the disk');
  const format = formatOpts(opts.format);
  const encrypted = (await readEncryptionParams(disk, format).catch(() => null)) !== null;
  const info = await withKeys(ctx, opts, async (keys) =>
    inspectDisk(disk, { ...format, signal: ctx.signal, ...(encrypted ? { keys: await keys.unlockOptions(disk, format) } : {}) }),
  );
  ctx.output.result({ ok: true, command: 'info', ...info });
  ctx.output.table(infoRows(info, disk));
}

/** The `qemu-img info`-like lines of a DiskInfo (shared with `vmseal demo`). */
export function infoRows(info: DiskInfo, disk: string): Array<[string, string]> {
  const rows: Array<[string, string]> = [
    ['image', info.path],
    ['file format', info.format],
    ['subformat', info.subformat],
    ['virtual size', `${formatBytes(info.virtualSize)} (${info.virtualSize} bytes)`],
    ['allocated size', `${formatBytes(info.allocatedSize)} (${info.allocatedSize} bytes)`],
    ['disk size', formatBytes(info.diskSize)],
    ['encrypted', info.encrypted ? 'yes' : 'no'],
  ];
  const e = info.encryption;
  if (e) {
    rows.push(['cipher', e.cipher], ['data unit size', `${e.unitSize} bytes`], ['disk id', e.diskId], ['format version', String(e.formatVersion)]);
    rows.push(['lockers', String(e.lockers.length)]);
    for (const [i, l] of e.lockers.entries()) rows.push([`  locker ${i}`, lockerText(l)]);
    const unlock =
      e.unlockable === null
        ? 'not checked (no keys given)'
        : e.unlockable
          ? 'yes'
          : `no (${e.unlockError?.code ?? 'locked'}: ${e.unlockError?.message ?? 'no key opens it'})`;
    rows.push(['unlockable now', unlock]);
  }
  if (info.chain) {
    rows.push(['snapshot chain', `${info.chain.length} layers, top first`]);
    for (const [i, l] of info.chain.entries()) rows.push([`  layer ${i}`, `${l.path} (CID ${l.cid ?? '-'})`]);
  }
  if (info.files.length > 0) rows.push(['files', info.files.join(', ')]);
  if (info.interrupted) rows.push(['interrupted job', `${info.interrupted.operation} (run \`vmseal resume ${disk}\`)`]);
  return rows;
}
