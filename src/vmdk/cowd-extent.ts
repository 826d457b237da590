import { VmdkFormatError } from './errors.js';
import type { HostFile } from './file.js';
import { GRAIN_HOLE, GrainMapExtent, badEntry, overlaps, readEsxHeader, type GrainMap } from './grain-map-extent.js';
import { COWD_MAGIC, MAX_GD_ENTRIES, MAX_GRAIN_SECTORS, SECTOR } from './sparse-header.js';

/**
 * The ESX sparse extent ("COWD", `VMFSSPARSE` extent lines, createType `vmfsSparse`): the delta disk
 * of a snapshot on VMFS (VMware's "Virtual Disk Format 5.0", ESX Server Sparse Extent). Header, 2048
 * bytes (4 sectors), little-endian u32 fields, sizes and offsets in 512-byte sectors:
 *
 *     0  magic "COWD"            4  version (1)          8  flags (ESX writes 3)
 *    12  numSectors (capacity)  16  grainSize (ESX: 1)   20  gdOffset
 *    24  numGDEntries           28  freeSector (next free sector of the file)
 *    32  root: cylinders, heads, sectors | child: parentFileName[1024], parentGeneration
 *  1060  generation  1064 name[60]  1124 description[512]  1636 savedGeneration
 *  1640  reserved[8] 1648 uncleanShutdown  1652 padding[396]
 *
 * The grain directory (numGDEntries u32 at gdOffset) holds the sector of each grain table, 0 for
 * none; a grain table is 4096 u32 entries (16 KiB) each the sector of a grain, 0 for a grain this
 * layer does not hold (its parent's, or zeros). There is no zeroed-grain entry and no redundant
 * directory. The parent is named by the descriptor (parentFileNameHint, parentCID), as qemu and
 * ESX read it; the header's parentFileName and generations are not used.
 */
export const COWD_HEADER_BYTES = 2048;
export const COWD_GTES_PER_GT = 4096;
const HEADER_SECTORS = COWD_HEADER_BYTES / SECTOR;
const TABLE_BYTES = COWD_GTES_PER_GT * 4;

export interface CowdHeader {
  version: number;
  flags: number;
  capacity: number;
  grainSize: number;
  gdOffset: number;
  numGDEntries: number;
  freeSector: number;
}

/** Parse and check a COWD header against the size of its file (`buf` holds at least its 2048 bytes). */
export function parseCowdHeader(buf: Buffer, file: string, fileSize: number): CowdHeader {
  const at = (off: number) => ({ file, offset: off });
  if (buf.readUInt32LE(0) !== COWD_MAGIC) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', 'wrong magic: expected a vmfsSparse extent header "COWD"', at(0));
  }
  const h: CowdHeader = {
    version: buf.readUInt32LE(4),
    flags: buf.readUInt32LE(8),
    capacity: buf.readUInt32LE(12),
    grainSize: buf.readUInt32LE(16),
    gdOffset: buf.readUInt32LE(20),
    numGDEntries: buf.readUInt32LE(24),
    freeSector: buf.readUInt32LE(28),
  };
  if (h.version !== 1) throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unsupported vmfsSparse header version ${h.version} (expected 1)`, at(4));
  if (h.capacity === 0) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'vmfsSparse header numSectors is 0', at(12));
  if (h.grainSize < 1 || h.grainSize > MAX_GRAIN_SECTORS || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `vmfsSparse grainSize ${h.grainSize} sectors is not a power of two between 1 and ${MAX_GRAIN_SECTORS}`, at(16));
  }
  const needed = Math.ceil(h.capacity / (h.grainSize * COWD_GTES_PER_GT));
  if (h.numGDEntries > MAX_GD_ENTRIES) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `vmfsSparse numGDEntries ${h.numGDEntries} is beyond the limit of ${MAX_GD_ENTRIES}`, at(24));
  }
  if (h.numGDEntries < needed) {
    throw new VmdkFormatError(
      'ERR_VMDK_CORRUPT',
      `vmfsSparse numGDEntries ${h.numGDEntries} does not cover the capacity (${h.capacity} sectors need ${needed})`,
      at(24),
    );
  }
  if (h.gdOffset < HEADER_SECTORS) {
    throw new VmdkFormatError('ERR_VMDK_CORRUPT', `vmfsSparse gdOffset ${h.gdOffset} points into the header (sectors 0-${HEADER_SECTORS - 1})`, at(20));
  }
  if (h.gdOffset * SECTOR + needed * 4 > fileSize) {
    throw new VmdkFormatError(
      'ERR_VMDK_TRUNCATED',
      `vmfsSparse grain directory (gdOffset ${h.gdOffset}, ${needed} entries) ends past the end of the file (${fileSize} bytes)`,
      at(20),
    );
  }
  return h;
}

/** The COWD map: entries are u32 sector numbers, each checked when used. */
class CowdMap implements GrainMap {
  readonly kind = 'VMFSSPARSE';
  readonly size: number;
  readonly grainBytes: number;
  readonly grainsPerTable = COWD_GTES_PER_GT;
  readonly tableBytes = TABLE_BYTES;
  readonly directoryOffset: number;
  readonly directoryEntryBytes = 4;
  readonly directoryEntries: number;
  readonly #file: HostFile;
  readonly #gdBytes: number;

  constructor(file: HostFile, h: CowdHeader) {
    this.#file = file;
    this.size = h.capacity * SECTOR;
    this.grainBytes = h.grainSize * SECTOR;
    this.directoryOffset = h.gdOffset * SECTOR;
    // Entries past what the capacity needs are never looked at.
    this.directoryEntries = Math.ceil(h.capacity / (h.grainSize * COWD_GTES_PER_GT));
    this.#gdBytes = this.directoryEntries * 4;
  }

  /** A table or grain at `sector` of `bytes` must lie after the header, off the directory, inside the file. */
  #check(sector: number, bytes: number, what: string, entryAt: number): number {
    const offset = sector * SECTOR;
    const file = this.#file;
    if (sector < HEADER_SECTORS) throw badEntry(file.path, entryAt, `${what} at sector ${sector} points into the vmfsSparse header`);
    if (overlaps(offset, bytes, this.directoryOffset, this.#gdBytes)) {
      throw badEntry(file.path, entryAt, `${what} at sector ${sector} overlaps the grain directory`);
    }
    if (offset + bytes > file.size) {
      throw badEntry(file.path, entryAt, `${what} at sector ${sector} ends past the end of the file (${file.size} bytes)`);
    }
    return offset;
  }

  tableOffset(entry: Buffer, index: number): number {
    const sector = entry.readUInt32LE(0);
    if (sector === 0) return GRAIN_HOLE;
    return this.#check(sector, TABLE_BYTES, `grain directory entry ${index}: the grain table`, this.directoryOffset + index * 4);
  }

  namesGrain(entry: Buffer): boolean {
    return entry.readUInt32LE(0) !== 0;
  }

  grainOffset(entry: Buffer, tableAt: number, index: number): number {
    const sector = entry.readUInt32LE(0);
    if (sector === 0) return GRAIN_HOLE;
    const where = tableAt + index * 4;
    const offset = this.#check(sector, this.grainBytes, `grain table entry ${index}: the grain`, where);
    if (overlaps(offset, this.grainBytes, tableAt, TABLE_BYTES)) {
      throw badEntry(this.#file.path, where, `grain table entry ${index}: the grain at sector ${sector} overlaps its own grain table`);
    }
    return offset;
  }
}

/** Open a COWD extent file (read-only): header checked now, directory and tables when first used. */
export async function openCowdExtent(file: HostFile, subformat: string): Promise<GrainMapExtent> {
  const h = await readEsxHeader(file, COWD_HEADER_BYTES, { value: COWD_MAGIC, bytes: 4 }, 'vmfsSparse header', parseCowdHeader);
  return new GrainMapExtent(file, new CowdMap(file, h), subformat);
}
