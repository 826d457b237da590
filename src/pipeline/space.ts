/** Free-space check before a job writes (best effort: where statfs works). */
import { PipelineError } from './errors.js';
import { folderFacts } from '../util/inline-fs.js';

/** Bytes available to this user in the file system holding `dir`, or null when unknown. */
export async function freeBytes(dir: string): Promise<number | null> {
  return (await folderFacts(dir)).freeBytes;
}

/** Metadata margin added to every estimate: grain tables, descriptors, file-system overhead. */
export function withMargin(bytes: number): number {
  return Math.ceil(bytes * 1.01) + (4 << 20);
}

/**
 * Refuse (ERR_NO_SPACE) when `dir` lacks room for `needed` bytes plus the margin. `free`: the bytes
 * free there as the caller read them moments ago (a job's statfs of its output folder, see
 * src/util/inline-fs.ts folderFacts), to spare another statfs; without it the folder is asked.
 */
export async function ensureSpace(dir: string, needed: number, what: string, free?: number | null): Promise<void> {
  if (free === undefined) free = await freeBytes(dir);
  if (free === null) return;
  const want = withMargin(needed);
  if (free < want) {
    throw new PipelineError('ERR_NO_SPACE', `not enough free space in ${dir} for ${what}: about ${mib(want)} MiB needed, ${mib(free)} MiB available`);
  }
}

const mib = (n: number): string => (n / 2 ** 20).toFixed(1);
