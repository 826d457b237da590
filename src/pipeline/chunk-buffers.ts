/**
 * Chunk buffers shared by the jobs of one process. A chunk buffer is native memory mapped from the
 * kernel (allocateCipherBuffer): a new one costs a page fault and a page of zeros for every 4 KiB
 * the first read fills, and its unmapping when the garbage collector gets to it. A batch of small
 * images would pay that for every image — for a 2 MiB image about as much as the read itself — so
 * the buffers a job is done with are kept for the next job for a moment, then dropped.
 */
import { allocateCipherBuffer } from '../xts/index.js';

/** Idle buffers kept at most (a job holds `depth` of them; a few jobs run at once). */
const MAX_IDLE = 16;
/** How long idle buffers are kept when no job takes them: long enough to bridge two images of a batch. */
const IDLE_MS = 2000;

const idle: Buffer[] = [];
let dropTimer: NodeJS.Timeout | undefined;

/** A native-owned buffer of exactly `size` bytes: an idle one of that size, or a new one. */
export function takeChunkBuffer(size: number): Buffer {
  const i = idle.findIndex((b) => b.length === size);
  return i >= 0 ? idle.splice(i, 1)[0]! : allocateCipherBuffer(size);
}

/** Give back buffers no I/O or cipher call uses any more; they are dropped after IDLE_MS unless taken. */
export function giveChunkBuffers(buffers: readonly Buffer[]): void {
  for (const b of buffers) if (idle.length < MAX_IDLE) idle.push(b);
  if (idle.length === 0) return;
  // Restarted at each give: a running batch keeps its buffers, a lone job's go away soon after it.
  if (dropTimer) dropTimer.refresh();
  else {
    dropTimer = setTimeout(() => {
      dropTimer = undefined;
      idle.length = 0;
    }, IDLE_MS);
    // Never keeps a process alive.
    dropTimer.unref();
  }
}
