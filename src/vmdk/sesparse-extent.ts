import { VmdkFormatError } from './errors.js';
import type { HostFile } from './file.js';
import { GRAIN_HOLE, GRAIN_ZERO, GrainMapExtent, badEntry, overlaps, readEsxHeader, type GrainMap } from './grain-map-extent.js';
import { SECTOR, SESPARSE_MAGIC, u64 } from './sparse-header.js';

/**
 * The seSparse extent (`SESPARSE` extent lines, createType `seSparse`): ESXi's "space-efficient"
 * delta disk, the default for snapshots since vSphere 6.5. VMware has not published it; this follows
 * what qemu's block/vmdk.c reads (Sam Eiderman, 2019) and checks as strictly. All fields u64
 * little-endian, sizes and offsets in 512-byte sectors.
 *
 * Const header, sector 0:
 *     0 magic 0xcafebabe   8 version 0x0000000200000001   16 capacity   24 grainSize (8)
 *    32 grainTableSize (64 sectors: 4096 entries)   40 flags (0)   48..79 reserved (0)
 *    80 volatileHeaderOffset, Size   96 journalHeaderOffset, Size   112 journalOffset, Size
 *   128 grainDirOffset, Size   144 grainTablesOffset, Size   160 freeBitmapOffset, Size
 *   176 backmapOffset, Size    192 grainsOffset, Size         208 padding[304] (0)
 * Volatile header, one sector at volatileHeaderOffset:
 *     0 magic 0xcafecafe   8 freeGTNumber   16 nextTxnSeqNumber   24 replayJournal (must be 0)
 *    32 padding[480] (0)
 *
 * Grain directory entry: 0 = no table; else the high u32 is 0x10000000 and the low u32 the index of
 * a table in the grain-table area (table at grainTablesOffset + index × grainTableSize). Grain table
 * entry, its type in the top nibble: 0 = not in this layer (the entry must be all zero), 1 =
 * unmapped (SCSI UNMAP) and 2 = zeroed — both read as zeros and hide the parent —, 3 = allocated:
 * grain index = bits 48-59 | bits 0-47 << 12, grain at grainsOffset + index × grainSize. The journal
 * is not replayed: a volatile header asking for it is refused.
 */
export const SESPARSE_VOLATILE_MAGIC = 0xcafecafe;
const VERSION = 0x0000000200000001n;
const GRAIN_SECTORS = 8;
const TABLE_SECTORS = 64;
const GTES_PER_GT = (TABLE_SECTORS * SECTOR) / 8;
/** Directory entries of a 64 TiB disk (each table covers 16 MiB): the largest seSparse disk. */
export const MAX_SESPARSE_GD_ENTRIES = 1 << 22;

export interface SeSparseHeader {
  capacity: number;
  volatileHeaderOffset: number;
  grainDirOffset: number;
  grainDirSize: number;
  grainTablesOffset: number;
  grainTablesSize: number;
  grainsOffset: number;
  grainsSize: number;
}

const FIELDS = [
  'magic',
  'version',
  'capacity',
  'grainSize',
  'grainTableSize',
  'flags',
  'reserved1',
  'reserved2',
  'reserved3',
  'reserved4',
  'volatileHeaderOffset',
  'volatileHeaderSize',
  'journalHeaderOffset',
  'journalHeaderSize',
  'journalOffset',
  'journalSize',
  'grainDirOffset',
  'grainDirSize',
  'grainTablesOffset',
  'grainTablesSize',
  'freeBitmapOffset',
  'freeBitmapSize',
  'backmapOffset',
  'backmapSize',
  'grainsOffset',
  'grainsSize',
] as const;

function isZero(buf: Buffer): boolean {
  for (const b of buf) if (b !== 0) return false;
  return true;
}

/** Parse and check the const header (`buf`: sector 0) against the size of its file. */
export function parseSeSparseHeader(buf: Buffer, file: string, fileSize: number): SeSparseHeader {
  const at = (field: (typeof FIELDS)[number]) => ({ file, offset: FIELDS.indexOf(field) * 8 });
  const raw = (field: (typeof FIELDS)[number]): bigint => buf.readBigUInt64LE(FIELDS.indexOf(field) * 8);
  const num = (field: (typeof FIELDS)[number]): number => u64(buf, FIELDS.indexOf(field) * 8, field, file, 0, 'seSparse header');
  if (raw('magic') !== BigInt(SESPARSE_MAGIC))
    throw new VmdkFormatError('ERR_VMDK_FORMAT', 'wrong magic: expected a seSparse const header (0xcafebabe)', at('magic'));
  if (raw('version') !== VERSION) {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unsupported seSparse version 0x${raw('version').toString(16)} (expected 0x200000001)`, at('version'));
  }
  if (raw('grainSize') !== BigInt(GRAIN_SECTORS)) {
    throw new VmdkFormatError(
      'ERR_VMDK_UNSUPPORTED',
      `unsupported seSparse grainSize ${raw('grainSize')} (expected ${GRAIN_SECTORS} sectors)`,
      at('grainSize'),
    );
  }
  if (raw('grainTableSize') !== BigInt(TABLE_SECTORS)) {
    throw new VmdkFormatError(
      'ERR_VMDK_UNSUPPORTED',
      `unsupported seSparse grainTableSize ${raw('grainTableSize')} (expected ${TABLE_SECTORS} sectors)`,
      at('grainTableSize'),
    );
  }
  if (raw('flags') !== 0n) throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unknown seSparse flags 0x${raw('flags').toString(16)}`, at('flags'));
  for (const r of ['reserved1', 'reserved2', 'reserved3', 'reserved4'] as const) {
    if (raw(r) !== 0n) throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `seSparse header field ${r} is not 0`, at(r));
  }
  if (!isZero(buf.subarray(FIELDS.length * 8, SECTOR))) {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'seSparse const header padding is not zero', { file, offset: FIELDS.length * 8 });
  }
  const h: SeSparseHeader = {
    capacity: num('capacity'),
    volatileHeaderOffset: num('volatileHeaderOffset'),
    grainDirOffset: num('grainDirOffset'),
    grainDirSize: num('grainDirSize'),
    grainTablesOffset: num('grainTablesOffset'),
    grainTablesSize: num('grainTablesSize'),
    grainsOffset: num('grainsOffset'),
    grainsSize: num('grainsSize'),
  };
  if (h.capacity === 0) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'seSparse capacity is 0', at('capacity'));
  const needed = Math.ceil(h.capacity / (GRAIN_SECTORS * GTES_PER_GT));
  if (needed > MAX_SESPARSE_GD_ENTRIES) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `seSparse capacity ${h.capacity} sectors is beyond the limit of 64 TiB`, at('capacity'));
  }
  if (h.grainDirSize * (SECTOR / 8) < needed) {
    throw new VmdkFormatError(
      'ERR_VMDK_CORRUPT',
      `seSparse grainDirSize ${h.grainDirSize} sectors does not cover the capacity (${needed} entries needed)`,
      at('grainDirSize'),
    );
  }
  // The areas read must not overlap each other or the two headers.
  const areas: Array<[name: (typeof FIELDS)[number], start: number, sectors: number]> = [
    ['volatileHeaderOffset', h.volatileHeaderOffset, 1],
    ['grainDirOffset', h.grainDirOffset, Math.ceil((needed * 8) / SECTOR)],
    ['grainTablesOffset', h.grainTablesOffset, h.grainTablesSize],
    ['grainsOffset', h.grainsOffset, h.grainsSize],
  ];
  for (const [i, [name, start, sectors]] of areas.entries()) {
    if (start < 1) throw new VmdkFormatError('ERR_VMDK_CORRUPT', `seSparse ${name} ${start} points into the const header`, at(name));
    for (const [other, s2, n2] of areas.slice(0, i)) {
      if (overlaps(start, sectors, s2, n2))
        throw new VmdkFormatError('ERR_VMDK_CORRUPT', `seSparse area at ${name} ${start} overlaps the one at ${other} ${s2}`, at(name));
    }
  }
  for (const [name, start, sectors] of areas.slice(0, 2)) {
    if ((start + sectors) * SECTOR > fileSize) {
      throw new VmdkFormatError(
        'ERR_VMDK_TRUNCATED',
        `seSparse area at ${name} ${start} (${sectors} sectors) ends past the end of the file (${fileSize} bytes)`,
        at(name),
      );
    }
  }
  return h;
}

/** Check the volatile header (one sector): a journal to replay means ESXi did not close the disk. */
export function checkSeSparseVolatileHeader(buf: Buffer, file: string, base: number): void {
  if (buf.readBigUInt64LE(0) !== BigInt(SESPARSE_VOLATILE_MAGIC)) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', 'wrong magic: expected a seSparse volatile header (0xcafecafe)', { file, offset: base });
  }
  if (buf.readBigUInt64LE(24) !== 0n) {
    throw new VmdkFormatError(
      'ERR_VMDK_UNSUPPORTED',
      'the seSparse journal must be replayed (replayJournal is set: ESXi did not close the disk cleanly); power the VM on and off in vSphere, or consolidate its snapshots, then retry',
      { file, offset: base + 24 },
    );
  }
  if (!isZero(buf.subarray(32, SECTOR))) {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'seSparse volatile header padding is not zero', { file, offset: base + 32 });
  }
}

class SeSparseMap implements GrainMap {
  readonly kind = 'SESPARSE';
  readonly size: number;
  readonly grainBytes = GRAIN_SECTORS * SECTOR;
  readonly grainsPerTable = GTES_PER_GT;
  readonly tableBytes = TABLE_SECTORS * SECTOR;
  readonly directoryOffset: number;
  readonly directoryEntryBytes = 8;
  readonly directoryEntries: number;
  readonly #file: HostFile;
  readonly #h: SeSparseHeader;

  constructor(file: HostFile, h: SeSparseHeader) {
    this.#file = file;
    this.#h = h;
    this.size = h.capacity * SECTOR;
    this.directoryOffset = h.grainDirOffset * SECTOR;
    this.directoryEntries = Math.ceil(h.capacity / (GRAIN_SECTORS * GTES_PER_GT));
  }

  tableOffset(entry: Buffer, index: number): number {
    const lo = entry.readUInt32LE(0);
    const hi = entry.readUInt32LE(4);
    const where = this.directoryOffset + index * 8;
    if (lo === 0 && hi === 0) return GRAIN_HOLE;
    if (hi !== 0x10000000) {
      throw badEntry(this.#file.path, where, `seSparse grain directory entry ${index} is 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}: not a table`);
    }
    if ((lo + 1) * TABLE_SECTORS > this.#h.grainTablesSize) {
      throw badEntry(
        this.#file.path,
        where,
        `seSparse grain directory entry ${index}: table ${lo} is past the grain-table area (grainTablesSize ${this.#h.grainTablesSize})`,
      );
    }
    const offset = (this.#h.grainTablesOffset + lo * TABLE_SECTORS) * SECTOR;
    if (offset + this.tableBytes > this.#file.size) {
      throw badEntry(this.#file.path, where, `seSparse grain directory entry ${index}: table ${lo} ends past the end of the file (${this.#file.size} bytes)`);
    }
    return offset;
  }

  namesGrain(entry: Buffer): boolean {
    return entry.readUInt32LE(4) >>> 28 === 3; // allocated
  }

  grainOffset(entry: Buffer, tableAt: number, index: number): number {
    const lo = entry.readUInt32LE(0);
    const hi = entry.readUInt32LE(4);
    const type = hi >>> 28;
    const where = tableAt + index * 8;
    const bad = (why: string) =>
      badEntry(this.#file.path, where, `seSparse grain table entry ${index} (0x${hi.toString(16).padStart(8, '0')}${lo.toString(16).padStart(8, '0')}) ${why}`);
    switch (type) {
      case 0:
        if (lo !== 0 || hi !== 0) throw bad('has type 0 (not allocated) but other bits set');
        return GRAIN_HOLE;
      case 1: // unmapped
      case 2: // zeroed
        return GRAIN_ZERO;
      case 3: {
        // bits 0-47 are the high part of the grain index, bits 48-59 its low 12 bits
        const high = (hi & 0xffff) * 2 ** 32 + lo;
        const limit = this.#h.grainsSize / GRAIN_SECTORS;
        if (high >= limit / 4096 + 1) throw bad(`names a grain past the grain area (grainsSize ${this.#h.grainsSize})`);
        const grain = high * 4096 + ((hi >>> 16) & 0xfff);
        if (grain + 1 > limit) throw bad(`names a grain past the grain area (grainsSize ${this.#h.grainsSize})`);
        const offset = (this.#h.grainsOffset + grain * GRAIN_SECTORS) * SECTOR;
        if (offset + this.grainBytes > this.#file.size) throw bad(`names grain ${grain}, which ends past the end of the file (${this.#file.size} bytes)`);
        return offset;
      }
      default:
        throw bad(`has the unknown type ${type}`);
    }
  }
}

/** Open a seSparse extent file (read-only): both headers checked now, directory and tables when first used. */
export async function openSeSparseExtent(file: HostFile, subformat: string): Promise<GrainMapExtent> {
  const h = await readEsxHeader(file, SECTOR, { value: SESPARSE_MAGIC, bytes: 8 }, 'seSparse const header', parseSeSparseHeader);
  const vol = Buffer.alloc(SECTOR);
  await file.readExact(vol, h.volatileHeaderOffset * SECTOR, 'the seSparse volatile header');
  checkSeSparseVolatileHeader(vol, file.path, h.volatileHeaderOffset * SECTOR);
  return new GrainMapExtent(file, new SeSparseMap(file, h), subformat);
}
