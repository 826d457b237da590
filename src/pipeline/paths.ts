/**
 * Which files a job works on. A disk given through a symbolic link is worked on where it really is:
 * its descriptor's real path is the one locked, journaled and rewritten (a rename over the link would
 * replace the link and leave the real descriptor saying "plain" over an extent that is now ciphertext).
 * Extent names are relative to the folder of the path the user gave (as qemu resolves them); when the
 * real descriptor's folder holds different files under the same names, the disk is ambiguous and
 * refused. An output name that is a dangling symbolic link is refused: writing through a planted link
 * is an attack.
 */
import { open, readlink, realpath, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Descriptor } from '../vmdk/index.js';

/**
 * The suffix of a disk's change bitmap, `<disk>.vmseal-ctk` (its format: src/backup/change-bitmap.ts).
 * Here so that a job that removes a disk (a snapshot commit removing the child) removes it too.
 */
export const CHANGE_BITMAP_SUFFIX = '.vmseal-ctk';
import { isSparseExtent } from '../vmdk/sparse-header.js';
import { PipelineError } from './errors.js';
import type { DiskFormat } from './options.js';
import { FolderCalls } from '../util/inline-fs.js';

/** The real path of an existing disk's descriptor (or raw image), checked for ambiguous extents. */
export async function realDiskPath(given: string): Promise<string> {
  const abs = resolve(given);
  let real: string;
  try {
    real = await realpath(abs);
  } catch {
    return abs; // missing: the job's own open reports it with its usual message
  }
  if (real !== abs && dirname(real) !== dirname(abs)) await checkExtentsAgree(abs, real);
  return real;
}

/** A text descriptor is at most this long; anything longer is an image, never read whole. */
const MAX_TEXT_DESCRIPTOR = 1 << 20;

/** Up to `limit` bytes from the start of `path`, or undefined if it cannot be read. */
async function readHead(path: string, limit: number): Promise<Buffer | undefined> {
  const fh = await open(path, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const buf = Buffer.alloc(limit);
    let filled = 0;
    while (filled < limit) {
      const { bytesRead } = await fh.read(buf, filled, limit - filled, filled);
      if (bytesRead === 0) break;
      filled += bytesRead;
    }
    return buf.subarray(0, filled);
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

async function checkExtentsAgree(given: string, real: string): Promise<void> {
  // One byte past the limit tells a descriptor of exactly the limit from a larger file, which is
  // an image (raw or sparse): reading it whole would cost its size in memory.
  const head = await readHead(real, MAX_TEXT_DESCRIPTOR + 1);
  // Only a text descriptor names files; sparse and raw files stand alone.
  if (!head || head.length > MAX_TEXT_DESCRIPTOR || isSparseExtent(head)) return;
  let d: Descriptor;
  try {
    d = Descriptor.parse(head, { file: real });
  } catch {
    return;
  }
  for (const e of d.extents) {
    if (e.file === undefined) continue;
    const viaGiven = join(dirname(given), e.file);
    const viaReal = join(dirname(real), e.file);
    const [a, b] = await Promise.all([stat(viaGiven).catch(() => undefined), stat(viaReal).catch(() => undefined)]);
    if (a && b && (a.dev !== b.dev || a.ino !== b.ino)) {
      throw new PipelineError(
        'ERR_INVALID_ARGUMENT',
        `${given} is a link to ${real}, and the extent ${e.file} names two different files: ${viaGiven} (beside the link, where qemu looks) and ${viaReal} (beside the descriptor). ` +
          'Give the real descriptor path, or remove one of the two files.',
      );
    }
  }
}

/** Refuse an output name that is a symbolic link to nothing. */
export async function checkOutputName(output: string, calls: FolderCalls = new FolderCalls(false)): Promise<void> {
  // Through the caller's folder calls: inline on a memory-backed folder (src/util/inline-fs.ts).
  const st = await calls.lstat(output);
  if (!st?.isSymbolicLink()) return;
  const target = await readlink(output).catch(() => '?');
  const exists = await stat(output).then(
    () => true,
    () => false,
  );
  if (!exists) {
    throw new PipelineError(
      'ERR_INVALID_ARGUMENT',
      `the output ${output} is a symbolic link to ${target}, which does not exist; vmseal does not write through a dangling link (it could have been planted to redirect the output). Remove the link or give another name.`,
    );
  }
}

/**
 * The files of an existing disk (descriptor and extents), whose names a job reserves before it
 * rewrites, replaces or removes them: none when `path` does not exist; `path` and the files its text
 * descriptor's extent lines name (beside it, as qemu resolves them); just `path` for a one-file disk
 * (a sparse file with its descriptor inside, a raw image) or a file that is no descriptor. Read from
 * the descriptor alone, never by opening the disk: the disk may be corrupt or huge (a 16 TiB sparse
 * disk's grain directories are megabytes), and the files are what is wanted, not the data. Only the
 * disk's own files: a snapshot's parent, which opening would reach, is another disk.
 */
export async function diskFiles(path: string, format: DiskFormat | undefined): Promise<string[]> {
  const st = await stat(path).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)));
  if (!st) return [];
  // A file larger than any text descriptor is a one-file disk (sparse or raw): not read at all.
  if (format === 'raw' || !st.isFile() || st.size > MAX_TEXT_DESCRIPTOR) return [path];
  const head = await readHead(path, MAX_TEXT_DESCRIPTOR + 1);
  if (!head || head.length > MAX_TEXT_DESCRIPTOR || isSparseExtent(head)) return [path];
  let d: Descriptor;
  try {
    d = Descriptor.parse(head, { file: path });
  } catch {
    return [path]; // not a descriptor: the job's own open reports what it is
  }
  const files = new Set([resolve(path)]);
  for (const e of d.extents) if (e.file !== undefined) files.add(resolve(dirname(path), e.file));
  return [...files];
}
