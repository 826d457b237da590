/**
 * trackChanges: keep a disk's change bitmap (`<disk>.vmseal-ctk`, change-bitmap.ts) while this
 * process writes it, so that the next `backup create` reads only the chunks written. The one way a
 * writer keeps the bitmap: `vmseal serve` attaches it to every disk it serves writable, a library
 * writer to the disk it opened.
 *
 * The tracker sits on the VMDK layer that takes the writes (the disk itself, the inner disk of an
 * EncryptedDisk, the top of a snapshot chain), not on the object handed back: every write reaches
 * it, whichever reference it came through, so the bits a clean file holds never miss one. The rule
 * of the file (dirty before the first change, clean at an orderly close) is ChangeTracker's.
 */
import type { EncryptedDisk } from '../disk/index.js';
import { ChainDisk, type VirtualDisk } from '../vmdk/index.js';
import { VmdkDisk } from '../vmdk/disk.js';
import { expected } from '../errors.js';
import { ChangeTracker, isTracked } from './change-bitmap.js';
import { BackupError } from './errors.js';

/** The VMDK layer whose files the writes of `disk` change, or undefined when there is none (another VirtualDisk). */
function writtenLayer(disk: VirtualDisk | EncryptedDisk): VmdkDisk | undefined {
  const inner = disk.encrypted ? disk.innerDisk : disk;
  if (inner instanceof ChainDisk) return inner.top;
  return inner instanceof VmdkDisk ? inner : undefined;
}

function isDisk(value: unknown): value is VirtualDisk | EncryptedDisk {
  return typeof value === 'object' && value !== null && typeof (value as { encrypted?: unknown }).encrypted === 'boolean' && 'path' in value;
}

/**
 * Keep the change bitmap of `disk` (opened by this process) from now until it is closed: every
 * change is marked before it is written (the file made dirty, durably, before the first one), and
 * close() writes the bits clean with the disk's generation after the writes, still holding the
 * disk's lock. Returns `disk` itself. Nothing to keep (returned as is): a disk opened read-only, a
 * raw image, a disk tracked already.
 */
export function trackChanges<D extends VirtualDisk | EncryptedDisk>(disk: D): D {
  if (!isDisk(disk)) throw new BackupError('ERR_INVALID_ARGUMENT', expected('a disk from openDisk or openPlainDisk', 'disk', disk));
  const layer = writtenLayer(disk);
  if (!layer || layer.readOnly || !isTracked(layer)) return disk;
  layer.watchChanges(new ChangeTracker(layer));
  return disk;
}
