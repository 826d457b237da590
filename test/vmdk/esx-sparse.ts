// Builds ESX delta disks byte by byte, as vSphere writes them, for tests: vmfsSparse ("COWD",
// VMware's "Virtual Disk Format 5.0", ESX Server Sparse Extent) and seSparse (the layout qemu's
// block/vmdk.c reads). Deliberately its own code, not the reader's: the test compares two
// independent readings of the same bytes (this writer's intent, and qemu-img's).
import { writeFileSync } from 'node:fs';
import { basename } from 'node:path';

const SECTOR = 512;

/** One grain of content: its index in the disk, and its bytes (a whole grain), or a zero marker. */
export interface EsxGrain {
  index: number;
  data?: Buffer;
  /** seSparse only: the grain reads as zeros and hides the parent (type 2), or 'unmapped' (type 1). */
  zero?: 'zero' | 'unmapped';
}

export interface BuiltExtent {
  bytes: Buffer;
  /** Where things landed, for tests that corrupt them: byte offsets. */
  gdOffset: number;
  /** Byte offset of each grain table, by table number. */
  tables: Map<number, number>;
  /** Byte offset of each grain's data, by grain index. */
  grains: Map<number, number>;
}

const COWD_GT_ENTRIES = 4096;

/** A vmfsSparse extent: header (4 sectors), grain directory, the tables in use, then the grains in the order given. */
export function buildCowd(capacitySectors: number, grainSectors: number, grains: EsxGrain[], parentFileName = ''): BuiltExtent {
  const grainBytes = grainSectors * SECTOR;
  const perTable = COWD_GT_ENTRIES * grainSectors;
  const gdEntries = Math.ceil(capacitySectors / perTable);
  const gdSector = 4;
  const gdSectors = Math.ceil((gdEntries * 4) / SECTOR);
  const usedTables = [...new Set(grains.map((g) => Math.floor(g.index / COWD_GT_ENTRIES)))].sort((a, b) => b - a); // placed last-first
  let next = gdSector + gdSectors;
  const tables = new Map<number, number>();
  for (const t of usedTables) {
    tables.set(t, next);
    next += (COWD_GT_ENTRIES * 4) / SECTOR;
  }
  const grainAt = new Map<number, number>();
  for (const g of grains) {
    grainAt.set(g.index, next);
    next += grainSectors;
  }
  const bytes = Buffer.alloc(next * SECTOR);
  bytes.write('COWD', 0, 'latin1');
  bytes.writeUInt32LE(1, 4); // version
  bytes.writeUInt32LE(3, 8); // flags, as ESX writes them
  bytes.writeUInt32LE(capacitySectors, 12);
  bytes.writeUInt32LE(grainSectors, 16);
  bytes.writeUInt32LE(gdSector, 20);
  bytes.writeUInt32LE(gdEntries, 24);
  bytes.writeUInt32LE(next, 28); // freeSector
  bytes.write(parentFileName, 32, 'latin1'); // u.child.parentFileName[1024]
  bytes.writeUInt32LE(1, 1060); // generation
  bytes.write('vmseal-test', 1064, 'latin1'); // name[60]
  for (const [t, sector] of tables) bytes.writeUInt32LE(sector, gdSector * SECTOR + t * 4);
  for (const g of grains) {
    const t = Math.floor(g.index / COWD_GT_ENTRIES);
    const sector = grainAt.get(g.index)!;
    bytes.writeUInt32LE(sector, tables.get(t)! * SECTOR + (g.index % COWD_GT_ENTRIES) * 4);
    if (g.data) g.data.copy(bytes, sector * SECTOR, 0, grainBytes);
  }
  return {
    bytes,
    gdOffset: gdSector * SECTOR,
    tables: new Map([...tables].map(([t, s]) => [t, s * SECTOR])),
    grains: new Map([...grainAt].map(([i, s]) => [i, s * SECTOR])),
  };
}

const SE_GRAIN_SECTORS = 8;
const SE_GT_ENTRIES = 4096; // 64 sectors of u64

/**
 * A seSparse extent: const header (sector 0), volatile header (1), journal header (2-3), a journal
 * area (empty), the grain directory, the grain-table area, free bitmap, backmap, then the grains.
 * Tables and grains are numbered in the reverse of their order in the disk, to be sure a reader
 * follows the indices rather than the order.
 */
export function buildSeSparse(capacitySectors: number, grains: EsxGrain[]): BuiltExtent {
  const perTable = SE_GT_ENTRIES * SE_GRAIN_SECTORS;
  const gdEntries = Math.ceil(capacitySectors / perTable);
  const gdSectors = Math.max(1, Math.ceil((gdEntries * 8) / SECTOR));
  const used = [...new Set(grains.map((g) => Math.floor(g.index / SE_GT_ENTRIES)))].sort((a, b) => a - b);
  const tableIndex = new Map(used.map((t, i) => [t, used.length - 1 - i]));
  const data = grains.filter((g) => g.data);
  const grainIndex = new Map(data.map((g, i) => [g.index, data.length - 1 - i]));
  const journalHeader = 2;
  const journal = 8;
  const journalSize = 8;
  const gd = journal + journalSize;
  const gtArea = gd + gdSectors;
  const gtSize = Math.max(1, used.length) * 64;
  const bitmap = gtArea + gtSize;
  const backmap = bitmap + 1;
  const grainArea = backmap + 1;
  const grainSize = Math.max(1, data.length) * SE_GRAIN_SECTORS;
  const bytes = Buffer.alloc((grainArea + grainSize) * SECTOR);
  const u64 = (at: number, v: bigint | number) => bytes.writeBigUInt64LE(BigInt(v), at);
  const fields: Array<bigint | number> = [
    0xcafebabe,
    0x0000000200000001n,
    capacitySectors,
    SE_GRAIN_SECTORS,
    64,
    0,
    0,
    0,
    0,
    0,
    1, // volatile header
    1,
    journalHeader,
    2,
    journal,
    journalSize,
    gd,
    gdSectors,
    gtArea,
    gtSize,
    bitmap,
    1,
    backmap,
    1,
    grainArea,
    grainSize,
  ];
  fields.forEach((v, i) => u64(i * 8, v));
  u64(SECTOR, 0xcafecafe); // volatile header magic; freeGTNumber, nextTxnSeqNumber, replayJournal 0
  u64(SECTOR + 8, used.length);
  u64(SECTOR + 16, 1);
  const tables = new Map<number, number>();
  for (const [t, i] of tableIndex) {
    u64(gd * SECTOR + t * 8, 0x1000000000000000n | BigInt(i));
    tables.set(t, (gtArea + i * 64) * SECTOR);
  }
  const grainAt = new Map<number, number>();
  for (const g of grains) {
    const entryAt = tables.get(Math.floor(g.index / SE_GT_ENTRIES))! + (g.index % SE_GT_ENTRIES) * 8;
    if (g.zero) {
      u64(entryAt, g.zero === 'zero' ? 0x2000000000000000n : 0x1000000000000000n);
      continue;
    }
    const n = BigInt(grainIndex.get(g.index)!);
    // the index's low 12 bits go to bits 48-59, the rest to bits 0-47
    u64(entryAt, 0x3000000000000000n | ((n & 0xfffn) << 48n) | (n >> 12n));
    const at = (grainArea + Number(n) * SE_GRAIN_SECTORS) * SECTOR;
    grainAt.set(g.index, at);
    g.data!.copy(bytes, at, 0, SE_GRAIN_SECTORS * SECTOR);
  }
  return { bytes, gdOffset: gd * SECTOR, tables, grains: grainAt };
}

export interface EsxDescriptorOptions {
  createType: 'vmfsSparse' | 'seSparse';
  capacitySectors: number;
  extentFile: string;
  cid: string;
  /** The parent's CID and file name; none: a base disk (parentCID=ffffffff). */
  parent?: { cid: string; hint: string };
}

/** The text descriptor ESX writes for a delta disk (`name.vmdk` beside `name-delta.vmdk` / `name-sesparse.vmdk`). */
export function esxDescriptor(o: EsxDescriptorOptions): string {
  const type = o.createType === 'vmfsSparse' ? 'VMFSSPARSE' : 'SESPARSE';
  return [
    '# Disk DescriptorFile',
    'version=1',
    'encoding="UTF-8"',
    `CID=${o.cid}`,
    `parentCID=${o.parent?.cid ?? 'ffffffff'}`,
    'isNativeSnapshot="no"',
    `createType="${o.createType}"`,
    ...(o.parent ? [`parentFileNameHint="${o.parent.hint}"`] : []),
    '# Extent description',
    `RW ${o.capacitySectors} ${type} "${basename(o.extentFile)}"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.longContentID = "0123456789abcdef0123456789abcdef"',
    '',
  ].join('\n');
}

/** Write a delta disk: its descriptor at `path` and its extent beside it; returns the extent's path. */
export function writeEsxDisk(path: string, extent: Buffer, o: Omit<EsxDescriptorOptions, 'extentFile'>): string {
  const suffix = o.createType === 'vmfsSparse' ? '-delta.vmdk' : '-sesparse.vmdk';
  const extentPath = path.replace(/\.vmdk$/, suffix);
  writeFileSync(extentPath, extent);
  writeFileSync(path, esxDescriptor({ ...o, extentFile: extentPath }));
  return extentPath;
}
