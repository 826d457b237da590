/**
 * A snapshot chain rebuilt aside, layer by layer, keeping each layer's structure: the one rule that
 * `vm encrypt`/`vm decrypt DIR` (src/vm/chain-aside.ts) and the deep rekey of a chain
 * (chain-deep-rekey.ts) share. The callers choose the keys and how the new files are committed.
 *
 *   1. the base: a copy job (`makeBase`) writes the new base from the old one;
 *   2. each child, from the bottom up: a new empty snapshot of the new parent (`makeChild`), then the
 *      child's OWN ranges copied into it — every grain its layer holds, allocated or zeroed (a zeroed
 *      grain hides the parent's bytes: it must stay held, with zeros), read through the old chain up
 *      to that child and written through the new one. Ranges the child does not hold read from the
 *      parent in both chains, so they are not copied and stay unallocated: the new child falls
 *      through to its parent exactly where the old one did.
 *
 * The new layers keep the old file names (in `stage`), so a child's parentFileNameHint still names
 * its parent after the files are moved over the old ones.
 */
import { open } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { openDisk as openVmdk, ownRanges, type VirtualDisk } from '../vmdk/index.js';

/** Bytes copied per read/write of a child's own data. */
const COPY_BYTES = 4 << 20;

/** What the copy needs of a disk (a VMDK layer's VirtualDisk, or an EncryptedDisk). */
export type ByteDisk = Pick<VirtualDisk, 'read' | 'write' | 'flush' | 'close'>;

export interface ChainRebuildSteps {
  /** Write the new base at `to` from the old base `from` (a copy job). */
  makeBase(from: string, to: string): Promise<void>;
  /** Make an empty child named `name` of the new layer `parent` (beside it); returns its path. */
  makeChild(parent: string, name: string): Promise<string>;
  /** The old chain up to `layer` (its top), open for reading the data the new one gets. */
  openOld(layer: string): Promise<ByteDisk>;
  /** The new layer `layer`, open for writing. */
  openNew(layer: string): Promise<ByteDisk>;
  signal?: AbortSignal | undefined;
  /** Called with the bytes of each child's own data copied. */
  onCopied?: (bytes: number) => void;
}

/** Copy the ranges `layer` holds itself (opened alone) from `from` to `to`. */
async function copyOwnData(layer: VirtualDisk, from: ByteDisk, to: ByteDisk, steps: ChainRebuildSteps): Promise<void> {
  for await (const r of ownRanges(layer)) {
    const end = r.offset + r.length;
    for (let pos = r.offset; pos < end; pos += COPY_BYTES) {
      steps.signal?.throwIfAborted();
      const len = Math.min(COPY_BYTES, end - pos);
      await to.write(pos, await from.read(pos, len));
      steps.onCopied?.(len);
    }
  }
  await to.flush();
}

/**
 * Rebuild the chain `bottomUp` (base first) in the folder `stage` with the same file names. Returns
 * the staged paths, base first. The caller holds the old chain still (its locks) and removes `stage`
 * on failure.
 */
export async function rebuildChain(bottomUp: readonly string[], stage: string, steps: ChainRebuildSteps): Promise<string[]> {
  const base = bottomUp[0]!;
  const stagedBase = join(stage, basename(base));
  await steps.makeBase(base, stagedBase);
  const staged = [stagedBase];
  let parent = stagedBase;
  for (const old of bottomUp.slice(1)) {
    steps.signal?.throwIfAborted();
    const made = await steps.makeChild(parent, basename(old));
    const own = await openVmdk(old, { readOnly: true, allowEncrypted: true, layerOnly: true });
    try {
      const from = await steps.openOld(old);
      try {
        const to = await steps.openNew(made);
        try {
          await copyOwnData(own, from, to, steps);
        } finally {
          await to.close();
        }
      } finally {
        await from.close();
      }
    } finally {
      await own.close();
    }
    staged.push(made);
    parent = made;
  }
  return staged;
}

/** fsync one file (a staged layer) before the step that makes it count. */
export async function fsyncFile(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
