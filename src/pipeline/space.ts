/** Free-space check before a job writes (best effort: where statfs works). */
import { statfs } from 'node:fs/promises';
import { PipelineError } from './errors.js';

/** Bytes available to this user in the file system holding `dir`, or null when unknown. */
export async function freeBytes(dir: string): Promise<number | null> {
  try {
    const s = await statfs(dir);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

/** Metadata margin added to every estimate: grain tables, descriptors, file-system overhead. */
export function withMargin(bytes: number): number {
  return Math.ceil(bytes * 1.01) + (4 << 20);
}

export async function ensureSpace(dir: string, needed: number, what: string): Promise<void> {
  const free = await freeBytes(dir);
  if (free === null) return;
  const want = withMargin(needed);
  if (free < want) {
    throw new PipelineError('ERR_NO_SPACE', `not enough free space in ${dir} for ${what}: about ${mib(want)} MiB needed, ${mib(free)} MiB available`);
  }
}

const mib = (n: number): string => (n / 2 ** 20).toFixed(1);
