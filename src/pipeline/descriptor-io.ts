/**
 * Writing a whole descriptor in a way a journal can repeat: a text descriptor is replaced
 * atomically (temp file, fsync, rename, fsync of the folder); an embedded one (monolithicSparse)
 * is rewritten in place, NUL-padded to its area, fsynced. The embedded rewrite is not atomic by
 * itself: every job that does it records the bytes in its journal first and repeats the write on
 * resume, so a torn write is always overwritten by a whole one.
 */
import { open, readdir, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { isTempNameOf, writeFileAtomic } from '../util/atomic-file.js';
import { readFully, writeFully } from '../util/file-io.js';
import { SECTOR, embeddedDescriptorArea } from '../vmdk/sparse-header.js';
import { PipelineError } from './errors.js';

export type DescriptorLocation = { kind: 'text'; path: string } | { kind: 'embedded'; path: string; offset: number; size: number };

/** Where the descriptor of the disk at `path` lives: its own text file, or the area a sparse header names. */
export async function locateDescriptor(path: string): Promise<DescriptorLocation> {
  const fh = await open(path, 'r');
  try {
    const head = Buffer.alloc(SECTOR);
    const { bytesRead } = await fh.read(head, 0, SECTOR, 0);
    const area = embeddedDescriptorArea(head.subarray(0, bytesRead), path);
    return area ? { kind: 'embedded', path, ...area } : { kind: 'text', path };
  } finally {
    await fh.close();
  }
}

/** The descriptor's bytes as they are now (an embedded one ends at its first NUL, as the VMDK layer reads it). */
export async function readDescriptorBytes(loc: DescriptorLocation): Promise<Buffer> {
  const fh = await open(loc.path, 'r');
  try {
    if (loc.kind === 'text') return await fh.readFile();
    const area = Buffer.alloc(loc.size);
    const n = await readFully(fh, area, loc.offset);
    const text = area.subarray(0, n);
    const nul = text.indexOf(0);
    return Buffer.from(nul < 0 ? text : text.subarray(0, nul));
  } finally {
    await fh.close();
  }
}

/** Remove temporary descriptor files (see util/atomic-file tempName) a killed writer left beside `path`. */
export async function removeStaleDescriptorTemps(path: string): Promise<void> {
  const dir = dirname(path);
  for (const f of await readdir(dir).catch(() => [] as string[])) {
    if (isTempNameOf(path, f)) await unlink(join(dir, f)).catch(() => undefined);
  }
}

export async function writeDescriptor(loc: DescriptorLocation, bytes: Uint8Array): Promise<void> {
  if (loc.kind === 'text') {
    await writeFileAtomic(loc.path, bytes, 'keep');
    return;
  }
  if (bytes.length >= loc.size) {
    throw new PipelineError(
      'ERR_INVALID_ARGUMENT',
      `the new descriptor of ${loc.path} (${bytes.length} bytes) does not fit its ${loc.size}-byte embedded area`,
    );
  }
  const buf = Buffer.alloc(loc.size);
  buf.set(bytes);
  const fh = await open(loc.path, 'r+');
  try {
    await writeFully(fh, buf, loc.offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/**
 * A descriptor's bytes with the CID line's value blanked: the job's first data write draws a new
 * CID in "during" (src/vmdk/disk.ts, as qemu does), which says nothing about the encryption.
 */
export function withoutCid(bytes: Buffer): string {
  return bytes.toString('latin1').replace(/(^|\n)CID=[0-9a-fA-F]{1,8}(?=\r?\n)/, '$1CID=');
}
