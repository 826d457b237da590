import { VmdkFormatError } from './errors.js';
import { MAX_GD_ENTRIES, MAX_SPARSE_FILE_SECTORS, SECTOR, gdEntryCount, gtSectors } from './sparse-header.js';

/** Grain table entries per table in every sparse file vmseal writes (qemu's and VMware's value). */
export const GTES_PER_GT = 512;

/**
 * Sectors before the first grain in vmseal's (and qemu-img's) sparse layout: header, embedded
 * descriptor, redundant GD and its tables, GD and its tables — every table preallocated — rounded up
 * to a whole grain. Grows with the capacity (8 bytes of tables per grain), not with the data.
 */
export function sparseOverheadSectors(capacitySectors: number, grainSectors: number, descriptorSectors: number): number {
  const gdEntries = gdEntryCount({ capacity: capacitySectors, grainSize: grainSectors, numGTEsPerGT: GTES_PER_GT });
  const gdSec = Math.ceil((gdEntries * 4) / SECTOR);
  const tables = gdEntries * gtSectors({ numGTEsPerGT: GTES_PER_GT });
  const end = 1 + descriptorSectors + 2 * (gdSec + tables);
  return Math.ceil(end / grainSectors) * grainSectors;
}

/**
 * Whether one hosted sparse extent file (monolithicSparse, streamOptimized) can hold a disk of
 * `capacity` bytes with `allocatedBytes` of data in grains of `grainSize` bytes. Grain and table
 * pointers are 32-bit sector numbers, so it is the file that cannot pass 2 TiB — data plus metadata
 * — not the capacity: a 16 TiB disk with 32 MiB of data fits. Pass the data rounded out to whole
 * grains (what a copy will allocate); a partial count is rounded up to grains here. The directory
 * must also stay within MAX_GD_ENTRIES (what vmseal reads back). Arguments are byte counts.
 */
export function sparseFileFits(capacity: number, allocatedBytes: number, grainSize: number, descriptorBytes = 20 * SECTOR): boolean {
  const grainSectors = grainSize / SECTOR;
  const capacitySectors = Math.ceil(capacity / SECTOR);
  const gdEntries = gdEntryCount({ capacity: capacitySectors, grainSize: grainSectors, numGTEsPerGT: GTES_PER_GT });
  if (gdEntries > MAX_GD_ENTRIES) return false;
  const overhead = sparseOverheadSectors(capacitySectors, grainSectors, Math.ceil(descriptorBytes / SECTOR));
  const data = Math.ceil(allocatedBytes / grainSize) * grainSectors;
  return overhead + data <= MAX_SPARSE_FILE_SECTORS;
}

/** sparseFileFits, or ERR_VMDK_LIMIT saying what does not fit and to use twoGbMaxExtentSparse. */
export function checkSparseFileFits(capacity: number, allocatedBytes: number, grainSize: number, file?: string): void {
  if (sparseFileFits(capacity, allocatedBytes, grainSize)) return;
  throw new VmdkFormatError(
    'ERR_VMDK_LIMIT',
    `one sparse extent file cannot hold ${allocatedBytes} bytes of data plus the metadata of a ${capacity}-byte disk ` +
      `(32-bit sector numbers: at most 2 TiB per file, and at most ${MAX_GD_ENTRIES} grain directory entries); ` +
      'write it as twoGbMaxExtentSparse (extent files of 2 GiB) instead',
    { file },
  );
}
