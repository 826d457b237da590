/**
 * The files behind a flat disk's virtual bytes, opened for the native chunk path (create.ts,
 * restore.ts): a chunk that lies inside one FLAT or VMFS extent (or a raw image) is a range of one
 * file, which native/backup_chunks.cc reads or writes by file descriptor without the VMDK layer.
 * The map is the pipeline's (outputFiles: the descriptor's extent lines); chunks across two extents
 * and ZERO extents are located nowhere and go through the VMDK layer as before.
 */
import { open, type FileHandle } from 'node:fs/promises';
import type { VirtualDisk } from '../vmdk/index.js';
import { outputFiles, type OutputSegment } from '../pipeline/output-files.js';

export interface FlatFiles {
  /** The file descriptor and file position of virtual [offset, offset + length), or null when no one file holds it. */
  locate(offset: number, length: number): { fd: number; position: number } | null;
  close(): Promise<void>;
}

/**
 * Open the files of `disk` (read-only, or read-write for `write`) when it is a single flat disk
 * whose files hold every byte their extents map (a shorter file: null, and the VMDK layer reports
 * it). Null for sparse and streamOptimized disks and for snapshot children.
 */
export async function openFlatFiles(disk: VirtualDisk, mode: 'read' | 'write'): Promise<FlatFiles | null> {
  if (disk.grainSize !== undefined) return null;
  const parent = disk.descriptor?.get('parentCID');
  if ((parent !== undefined && parent.toLowerCase() !== 'ffffffff') || disk.descriptor?.has('parentFileNameHint')) return null;
  const { files, segments } = outputFiles(disk);
  if (!segments.every((s) => s.kind === 'FLAT' || s.kind === 'VMFS')) return null;
  const handles: FileHandle[] = [];
  const close = async (): Promise<void> => {
    await Promise.all(handles.map((h) => h.close().catch(() => undefined)));
  };
  try {
    for (const path of files) {
      const h = await open(path, mode === 'write' ? 'r+' : 'r');
      handles.push(h);
      const need = segments.reduce((m, s) => (files[s.file] === path ? Math.max(m, s.fileOffset + s.end - s.start) : m), 0);
      if ((await h.stat()).size < need) {
        await close();
        return null;
      }
    }
  } catch {
    await close();
    return null; // the VMDK layer reports it in its own words
  }
  let last: OutputSegment | undefined;
  const locate = (offset: number, length: number): { fd: number; position: number } | null => {
    // Chunks come in increasing order: the segment of the previous one is the likely one.
    if (!last || offset < last.start || offset >= last.end) last = segments.find((s) => offset >= s.start && offset < s.end);
    if (!last || offset + length > last.end) return null;
    return { fd: handles[last.file]!.fd, position: last.fileOffset + (offset - last.start) };
  };
  return { locate, close };
}
