/**
 * Where a copy job's output keeps each virtual byte: the files behind its extents. The write-behind
 * and the direct writer open these files a second time (the VMDK layer's handles stay its own), so
 * both need the mapping from virtual offsets to (file, offset in the file); this is its one place.
 * A raw output is one file holding the whole capacity; a VMDK maps through its descriptor's extent
 * lines (ZERO extents hold no file and are left out).
 */
import { dirname, resolve } from 'node:path';
import type { VirtualDisk } from '../vmdk/index.js';

export interface OutputSegment {
  /** Virtual range [start, end) held by `file`. */
  start: number;
  end: number;
  /** Index into the `files` list. */
  file: number;
  /** Where `start` lies in the file (the extent line's offset; 0 for a raw image). */
  fileOffset: number;
  /** The extent's kind: FLAT/VMFS hold the bytes as they are (raw: FLAT); SPARSE maps grains. */
  kind: string;
}

export interface OutputFiles {
  /** Absolute paths, each once, in the order of their first segment. */
  files: string[];
  /** In increasing virtual order. */
  segments: OutputSegment[];
}

export function outputFiles(disk: VirtualDisk): OutputFiles {
  const files: string[] = [];
  const segments: OutputSegment[] = [];
  const index = new Map<string, number>(); // thousands of extent files: no linear search per extent
  const fileIndex = (path: string): number => {
    let i = index.get(path);
    if (i === undefined) index.set(path, (i = files.push(path) - 1));
    return i;
  };
  if (!disk.descriptor) {
    segments.push({ start: 0, end: disk.capacity, file: fileIndex(disk.path), fileOffset: 0, kind: 'FLAT' });
    return { files, segments };
  }
  let start = 0;
  for (const e of disk.descriptor.extents) {
    const end = start + e.sectors * 512;
    if (e.file !== undefined && e.type !== 'ZERO') {
      segments.push({ start, end, file: fileIndex(resolve(dirname(disk.path), e.file)), fileOffset: e.offset * 512, kind: e.type });
    }
    start = end;
  }
  return { files, segments };
}
