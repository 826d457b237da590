/**
 * Encrypted snapshot chains (docs/format.md, "Snapshot chains"): every layer is encrypted under the
 * same DEK, cipher, unit size and disk id, so data moves between layers without re-encryption; each
 * layer (format version 3) has its own `encryption.layerId`, a child names its parent's in
 * `encryption.parentLayerId`, and both are bound by the child's own authenticator.
 */
import { randomBytes } from 'node:crypto';
import { computeAuthenticator, verifyAuthenticator } from '../keys/index.js';
import { ChainDisk, type VirtualDisk } from '../vmdk/index.js';
import { DiskError } from './errors.js';
import { bindingOf, unlockDek, type UnlockOptions } from './keying.js';
import { LAYERED_VERSION, LINE, parseEncryption, unsafeValueReason, type EncryptionParams } from './params.js';

const MAX_TRIES = 64;

function wrongParent(message: string): DiskError {
  return new DiskError('ERR_WRONG_PARENT', message);
}

function paramsOf(disk: VirtualDisk): EncryptionParams | undefined {
  return disk.descriptor ? parseEncryption(disk.descriptor.entries(), disk.path)?.params : undefined;
}

/**
 * Check the layers below the top of an encrypted chain against the DEK unlocked from the top (whose
 * own authenticator is already verified): each parent is a layer of the same encrypted disk (same
 * cipher, unit size and disk id), its authenticator verifies under the same DEK (which authenticates
 * its layer id), and it is the layer its child was made on (child's parentLayerId = its layerId).
 * A disk that says it is a child (parentLayerId) but has no parent disk is refused too.
 */
export function checkLayers(inner: VirtualDisk, top: EncryptionParams, dek: Buffer): void {
  if (!(inner instanceof ChainDisk)) {
    if (top.parentLayerId !== undefined) {
      throw wrongParent(`${inner.path} is a snapshot layer (encryption.parentLayerId) but its descriptor names no parent disk`);
    }
    return;
  }
  const layers = inner.layers();
  let child = top;
  for (let i = 1; i < layers.length; i++) {
    const parent = layers[i];
    const childPath = layers[i - 1].path;
    const p = paramsOf(parent);
    if (!p) throw wrongParent(`${parent.path}, the parent of ${childPath}, is not encrypted`);
    if (child.parentLayerId === undefined) {
      throw wrongParent(`${childPath} has a parent disk but no ${LINE.parentLayerId} line: it was not made as an encrypted snapshot by vmseal`);
    }
    if (p.cipher !== child.cipher || p.unitSize !== child.unitSize || p.diskId !== child.diskId) {
      throw wrongParent(`${parent.path} is not a layer of the same encrypted disk as ${childPath} (cipher, data unit size or disk id differ)`);
    }
    try {
      verifyAuthenticator(dek, bindingOf(p, parent.capacity), p.authenticator);
    } catch (err) {
      throw new DiskError('ERR_WRONG_PARENT', `${parent.path} is not encrypted under the same key as ${childPath}, or its encryption lines were changed`, {
        cause: err,
      });
    }
    if (p.layerId !== child.parentLayerId) {
      throw wrongParent(
        `${childPath} was made on layer ${child.parentLayerId}, but its parent ${parent.path} is layer ${p.layerId ?? '(none: not a chain layer)'}`,
      );
    }
    child = p;
  }
}

/** Version-3 params with a fresh layer id (redrawn until the authenticator is descriptor-safe). */
export function layered(dek: Buffer, p: EncryptionParams, capacity: number, parentLayerId: string | undefined): EncryptionParams {
  for (let i = 0; i < MAX_TRIES; i++) {
    const next: EncryptionParams = { ...p, formatVersion: LAYERED_VERSION, layerId: randomBytes(16).toString('hex'), parentLayerId };
    if (parentLayerId === undefined) delete next.parentLayerId;
    next.authenticator = computeAuthenticator(dek, bindingOf(next, capacity));
    if (unsafeValueReason(next.authenticator) === null) return next;
  }
  throw new DiskError('ERR_ENCRYPTION_METADATA', 'could not make a descriptor-safe authenticator');
}

/**
 * The encryption of a standalone copy of a chain layer (a convert flattens the chain under the same
 * DEK): version 3 with a fresh layer id and no parent, so the copy is not taken for a child without
 * its parent. Needs the DEK (the authenticator changes), unlocked with `keys`. Params of a disk that
 * is not a layer are returned as they are.
 */
export async function standaloneLayerParams(p: EncryptionParams, capacity: number, keys: UnlockOptions, where: string): Promise<EncryptionParams> {
  if (p.layerId === undefined) return p;
  const dek = await unlockDek(p, capacity, keys, where);
  try {
    return layered(dek, p, capacity, undefined);
  } finally {
    dek.fill(0);
  }
}
