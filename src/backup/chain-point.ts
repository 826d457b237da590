/**
 * Backups of snapshot chains. A point of a chain layer stores the chain's merged ciphertext view as
 * seen at that layer (the layer given and every layer under it): all layers of an encrypted chain
 * share one DEK and disk id, and XTS is keyed by the virtual disk's unit number, so the merged view
 * is the disk's ciphertext view, read without any key (what `qemu-img convert -O raw` of the layer
 * gives). The point's one manifest layer is that view, shaped like the chain's base (its subformat,
 * grain and extent sizes), with a FLATTENED descriptor (below); the manifest's `chain` field records
 * every real layer (path, subformat, descriptor text with its KeySafe) and which one was backed up.
 *
 * The flattened descriptor is what a single-layer disk holding that view needs, made without a key:
 * the base's descriptor (its createType, extents, ddb lines — so restores keep the base's ddb.uuid
 * and history — and its encryption.format, layerId and authenticator), with the top's CID, data
 * check and KeySafe. Why that is valid: the authenticator binds cipher, unit size, capacity, disk id,
 * format version and the layer ids (docs/format.md); the base's binds its own layerId and no parent,
 * which is exactly what a base disk is, and cipher, unit size, capacity and disk id are the chain's.
 * The data check binds unit 0's plaintext to the disk id (not to a layer), so the top's value is the
 * one the merged view matches. The KeySafe is the top's (what opens the chain; a shallow rekey
 * rewrites every layer's). So a restore needs no key, and the restored disk opens as a base.
 *
 * Without a key the layers' authenticators cannot be checked, so the chain is checked by its lines:
 * every layer has the same cipher, unit size and disk id, each child names its parent's layerId as
 * parentLayerId, and the base has none; anything else is refused (ERR_WRONG_PARENT) instead of
 * storing a point whose restore would not open.
 */
import { ChainDisk, Descriptor, type VirtualDisk } from '../vmdk/index.js';
import { BackupError } from './errors.js';
import { RESTORED_FROM_KEY } from './lineage.js';

/** One real layer of a backed-up chain, as the manifest's `chain.layers` records it. */
export interface ChainLayerRecord {
  /** The layer's path when it was backed up (informational, like the point's `source`). */
  path: string;
  /** Its createType. */
  subformat: string;
  /** Its descriptor text as the layer had it (KeySafe and every line included). */
  descriptor: string;
}

/** The manifest's `chain` field: present only on points of a snapshot chain's layer. */
export interface PointChain {
  /** The chain's layers, base first, up to the layer backed up. */
  layers: ChainLayerRecord[];
  /** Index in `layers` of the layer whose merged view the point stores (this version: always the last). */
  backedUp: number;
}

/** Encryption lines every layer of a chain must share (the DEK and what is bound with it). */
const SHARED_LINES = ['encryption.cipher', 'encryption.dataUnitSize', 'encryption.diskId'] as const;

/** The layers of `disk`, base first, or null when it is a single layer. */
export function chainLayers(disk: VirtualDisk): VirtualDisk[] | null {
  return disk instanceof ChainDisk ? disk.layers().reverse() : null;
}

/** Check an encrypted chain's lines, without a key (see above); plain chains have none to check. */
function checkLines(layers: VirtualDisk[]): void {
  const base = layers[0]!.descriptor!;
  if (!base.isEncrypted()) return;
  if (base.has('encryption.parentLayerId')) {
    throw new BackupError('ERR_WRONG_PARENT', `${layers[0]!.path}, the base of the chain, names a parent layer (encryption.parentLayerId) but has none`);
  }
  for (let i = 1; i < layers.length; i++) {
    const d = layers[i]!.descriptor!;
    const parent = layers[i - 1]!.descriptor!;
    for (const key of SHARED_LINES) {
      if (d.get(key) !== base.get(key)) {
        throw new BackupError(
          'ERR_WRONG_PARENT',
          `${layers[i]!.path} and the chain's base ${layers[0]!.path} have different ${key} lines: not layers of one disk`,
        );
      }
    }
    const want = parent.get('encryption.layerId');
    if (want === undefined || d.get('encryption.parentLayerId') !== want) {
      throw new BackupError(
        'ERR_WRONG_PARENT',
        `${layers[i]!.path} names parent layer ${d.get('encryption.parentLayerId') ?? '(none)'}, but its parent ${layers[i - 1]!.path} is layer ${want ?? '(none)'}`,
      );
    }
  }
}

/** The chain record of a point of `layers` (base first, the layer backed up last). */
export function chainRecord(layers: VirtualDisk[]): PointChain {
  checkLines(layers);
  return {
    layers: layers.map((l) => ({ path: l.path, subformat: l.subformat, descriptor: l.descriptor!.toString() })),
    backedUp: layers.length - 1,
  };
}

/**
 * The lineage line (lineage.ts) of a chain: the nearest layer's from the top down that has one (a
 * snapshot of a restored disk inherits its base's), '' for none.
 */
export function chainLineage(layers: VirtualDisk[]): string {
  for (let i = layers.length - 1; i >= 0; i--) {
    const line = layers[i]!.descriptor?.get(RESTORED_FROM_KEY);
    if (line !== undefined) return line;
  }
  return '';
}

/** The flattened descriptor of a chain's merged view (see above): the base's with the top's CID, data check and KeySafe. */
export function flattenedDescriptor(layers: VirtualDisk[]): Descriptor {
  const top = layers[layers.length - 1]!.descriptor!;
  const d = layers[0]!.descriptor!.clone();
  const cid = top.get('CID');
  if (cid !== undefined) d.set('CID', cid);
  for (const key of ['encryption.dataCheck', 'encryption.keySafe']) {
    const v = top.get(key);
    if (v !== undefined && d.has(key)) d.set(key, v);
  }
  const line = chainLineage(layers);
  if (line !== '') d.set(RESTORED_FROM_KEY, line);
  return d;
}

/**
 * Whether a change bitmap of `now`'s top may count from a point of `then`: both single disks
 * (undefined), or the same chain — the same layer paths, and every layer below the top with the CID
 * it had (those layers are read-only while they have a child; a CID differs if one was written or
 * replaced). The top's own changes are the bitmap's, its generation checked by the bitmap itself.
 */
export function sameChain(then: PointChain | undefined, now: PointChain | undefined): boolean {
  if (then === undefined || now === undefined) return then === now;
  if (then.layers.length !== now.layers.length || then.backedUp !== now.backedUp) return false;
  const cid = (l: ChainLayerRecord): string | undefined => Descriptor.parse(l.descriptor).get('CID')?.toLowerCase();
  return now.layers.every((l, i) => l.path === then.layers[i]!.path && (i === now.backedUp || cid(l) === cid(then.layers[i]!)));
}
