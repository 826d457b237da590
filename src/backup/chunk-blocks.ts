/**
 * Putting a point's chunk into a disk while keeping the point's holes — the one rule a restore to a
 * new disk (restore.ts) and a rollback (restore-over.ts) share. A chunk is cut into blocks (a sparse
 * disk's grains; for flat extents, FLAT_BLOCK); runs of blocks that are not all zeros are written
 * whole, and runs of zero blocks are either left alone (a new disk: they read as zeros already, and
 * stay unallocated grains or host holes) or deallocated (a sparse disk being rolled back: they become
 * holes again, as in the point). An allocated grain holds ciphertext over its whole length
 * (docs/format.md), so a whole grain of zeros in the ciphertext view is a hole, never data.
 */
import type { VirtualDisk } from '../vmdk/index.js';

/** Zero blocks of this size are not written to flat extents and raw images (they stay host holes). */
export const FLAT_BLOCK = 64 * 1024;

const ZERO = Buffer.alloc(1024 * 1024);

function isZero(b: Uint8Array): boolean {
  for (let s = 0; s < b.length; s += ZERO.length) {
    const part = b.subarray(s, Math.min(b.length, s + ZERO.length));
    if (!Buffer.from(part.buffer, part.byteOffset, part.length).equals(ZERO.subarray(0, part.length))) return false;
  }
  return true;
}

/**
 * `data` cut into `block`-sized blocks, each marked all zeros or not: [start, end, zero], in order;
 * with `merge`, neighbours of the same kind are one run.
 */
export function blockRuns(data: Uint8Array, block: number, merge = true): Array<[number, number, boolean]> {
  const runs: Array<[number, number, boolean]> = [];
  for (let s = 0; s < data.length; s += block) {
    const e = Math.min(s + block, data.length);
    const zero = isZero(data.subarray(s, e));
    const last = runs[runs.length - 1];
    if (merge && last && last[1] === s && last[2] === zero) last[1] = e;
    else runs.push([s, e, zero]);
  }
  return runs;
}

/**
 * Put `data` (a chunk of the point's ciphertext view) at `offset` of `disk`, keeping its holes:
 * runs of non-zero `block`s are written; runs of zero blocks are left alone (`'skip'`), deallocated
 * (`'deallocate'`: a sparse disk's whole grains; grains that are holes already stay so) or written
 * as zeros (`'write'`: a flat disk, which has no holes to make). Returns the bytes written.
 *
 * A new disk (`'skip'`) gets one write per run; a disk rolled back gets one call per block, as its
 * journaled job always made them (its crash tests count those calls).
 */
export async function putChunkKeepingHoles(
  disk: VirtualDisk,
  offset: number,
  data: Uint8Array,
  block: number,
  zeros: 'skip' | 'deallocate' | 'write',
): Promise<number> {
  let bytes = 0;
  for (const [s, e, zero] of blockRuns(data, block, zeros === 'skip')) {
    if (zero && zeros === 'skip') continue;
    if (zero && zeros === 'deallocate') {
      await disk.deallocate(offset + s, e - s);
      continue;
    }
    await disk.write(offset + s, data.subarray(s, e));
    bytes += e - s;
  }
  return bytes;
}
