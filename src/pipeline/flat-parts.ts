/**
 * A copy between flat files, as runs of (input file, output file): the map the copy paths that work
 * on file descriptors (kernel-copy.ts, chunk-transfer.ts) share. Both sides must hold their virtual
 * bytes as they are — raw images, FLAT/VMFS extents: no grains, no layout to convert — so that a
 * virtual offset is a file position on each side.
 */
import { stat } from 'node:fs/promises';
import type { VirtualDisk } from '../vmdk/index.js';
import { isFlatOutput } from './direct-write.js';
import { outputFiles, type OutputSegment } from './output-files.js';

/** A run of an input file that lands in one output file. */
export interface FlatPart {
  source: OutputSegment;
  sourcePath: string;
  target: OutputSegment;
  targetPath: string;
  /** Virtual range [start, end). */
  start: number;
  end: number;
}

/**
 * The copy as runs of (input file, output file), in virtual order; null when this is not a copy
 * between flat files (sparse or streamOptimized on either side, a snapshot child, an input file
 * shorter than its extent: the engine then reads through the VMDK layer, which reports it). ZERO
 * extents of the input hold no file and are absent: they read as zeros.
 */
export async function flatParts(source: VirtualDisk, target: VirtualDisk): Promise<FlatPart[] | null> {
  if (!isFlatOutput(target) || source.grainSize !== undefined) return null;
  const parent = source.descriptor?.get('parentCID');
  if ((parent !== undefined && parent.toLowerCase() !== 'ffffffff') || source.descriptor?.has('parentFileNameHint')) return null;
  const src = outputFiles(source);
  if (!src.segments.every((s) => s.kind === 'FLAT' || s.kind === 'VMFS')) return null;
  for (const [i, path] of src.files.entries()) {
    const need = src.segments.reduce((m, s) => (s.file === i ? Math.max(m, s.fileOffset + s.end - s.start) : m), 0);
    try {
      if ((await stat(path)).size < need) return null;
    } catch {
      return null; // let the engine report it in its own words
    }
  }
  const out = outputFiles(target);
  const parts: FlatPart[] = [];
  // Both lists are in virtual order.
  let t = 0;
  for (const s of src.segments) {
    let at = s.start;
    while (at < s.end) {
      while (t < out.segments.length && out.segments[t].end <= at) t++;
      const o = out.segments[t];
      if (o === undefined || o.start > at) return null; // cannot happen: a flat output covers its capacity
      const end = Math.min(s.end, o.end);
      parts.push({ source: s, sourcePath: src.files[s.file], target: o, targetPath: out.files[o.file], start: at, end });
      at = end;
    }
  }
  return parts;
}
