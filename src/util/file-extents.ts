import { loadNativeAddon } from './native-addon.js';

/** A byte range of a file that holds data: [offset, offset + length). */
export type DataRange = [offset: number, length: number];

type FileDataRangesFn = (fd: number, start: number, end: number, maxRanges: number) => DataRange[];
let cached: FileDataRangesFn | null | undefined;

/**
 * The ranges of [start, end) of the open file `fd` that hold data, in order, from the addon's
 * lseek(SEEK_DATA/SEEK_HOLE) scan (native/fs_extents.cc). Conservative by contract: what is not
 * listed reads as zeros. At most `maxRanges` pairs: when that many come back, everything from the
 * end of the last one on is unknown and must be taken as data. File systems without SEEK_DATA, and
 * an addon built before the call existed, report the whole range as data.
 */
export function fileDataRanges(fd: number, start: number, end: number, maxRanges: number): DataRange[] {
  if (cached === undefined) {
    const fn = loadNativeAddon().fileDataRanges;
    cached = typeof fn === 'function' ? (fn as FileDataRangesFn) : null;
  }
  if (cached === null) return end > start ? [[start, end - start]] : [];
  return cached(fd, start, end, maxRanges);
}
