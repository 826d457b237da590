import { VmdkFormatError } from './errors.js';

/**
 * The hosted sparse extent header ("KDMV"), 512 bytes, little-endian; sizes and offsets in 512-byte sectors.
 *
 *   off size field
 *     0   4  magic "KDMV"
 *     4 u32  version: 1; 2 = zeroed-grain GT entries allowed; 3 = streamOptimized
 *     8 u32  flags: bit0 newline test valid, bit1 redundant GD in use, bit2 zeroed-grain GTEs,
 *                   bit16 compressed grains, bit17 metadata markers
 *    12 u64  capacity (sectors)
 *    20 u64  grainSize (sectors, power of two)
 *    28 u64  descriptorOffset      36 u64 descriptorSize
 *    44 u32  numGTEsPerGT (512)
 *    48 u64  rgdOffset             56 u64 gdOffset (all ones = GD_AT_END: the footer at EOF-1024 has it)
 *    64 u64  overHead (sectors of metadata before the first grain)
 *    72 u8   uncleanShutdown
 *    73 4    "\n \r\n" (detects a file mangled by a text-mode transfer)
 *    77 u16  compressAlgorithm (0 none, 1 deflate)
 *    79 433  zero padding
 */

export const SECTOR = 512;
export const SPARSE_MAGIC = 0x564d444b; // "KDMV" read as little-endian u32
export const COWD_MAGIC = 0x44574f43; // "COWD": ESX vmfsSparse extent
export const SESPARSE_MAGIC = 0xcafebabe; // seSparse const header (low u32)
export const GD_AT_END = 0xffffffffffffffffn;

export const FLAG_NEWLINE_TEST = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZEROED_GTE = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;
const KNOWN_FLAGS = FLAG_NEWLINE_TEST | FLAG_RGD | FLAG_ZEROED_GTE | FLAG_COMPRESSED | FLAG_MARKERS;

/** Bounds on header fields (documented in docs/vmdk.md). */
export const MAX_GRAIN_SECTORS = 2048; // 1 MiB grains
export const MAX_GTES_PER_GT = 4096; // 16 KiB grain tables
export const MAX_GD_ENTRIES = 1 << 20; // 4 MiB grain directory
export const MAX_EMBEDDED_DESCRIPTOR_SECTORS = 2048; // 1 MiB
/** Sector numbers in grain directories and tables are u32: a hosted sparse file cannot exceed 2 TiB. */
export const MAX_SPARSE_FILE_SECTORS = 2 ** 32;

export interface SparseHeader {
  version: number;
  flags: number;
  capacity: number;
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** -1 = GD_AT_END (look in the footer) */
  gdOffset: number;
  overHead: number;
  uncleanShutdown: number;
  compressAlgorithm: number;
}

/**
 * The u64 header field at `at` as a number, or ERR_VMDK_LIMIT past 2^53 (no real disk comes near).
 * `header` names the header in the message: monolithicSparse's here, seSparse's too.
 */
export function u64(buf: Buffer, at: number, field: string, file: string, base: number, header = 'sparse header'): number {
  const v = buf.readBigUInt64LE(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `${header} field ${field} is ${v}, beyond 2^53`, { file, offset: base + at });
  }
  return Number(v);
}

/** Parse and check a header or footer (`base` = its offset in the file, for messages). */
export function parseSparseHeader(buf: Buffer, file: string, base = 0): SparseHeader {
  const magic = buf.readUInt32LE(0);
  if (magic !== SPARSE_MAGIC) {
    if (magic === COWD_MAGIC)
      throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'unsupported subformat: vmfsSparse ("COWD") extents are not supported', { file, offset: base });
    if (magic === SESPARSE_MAGIC)
      throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'unsupported subformat: seSparse extents are not supported', { file, offset: base });
    throw new VmdkFormatError('ERR_VMDK_FORMAT', 'wrong magic: expected a sparse extent header "KDMV"', { file, offset: base });
  }
  const gdRaw = buf.readBigUInt64LE(56);
  const h: SparseHeader = {
    version: buf.readUInt32LE(4),
    flags: buf.readUInt32LE(8),
    capacity: u64(buf, 12, 'capacity', file, base),
    grainSize: u64(buf, 20, 'grainSize', file, base),
    descriptorOffset: u64(buf, 28, 'descriptorOffset', file, base),
    descriptorSize: u64(buf, 36, 'descriptorSize', file, base),
    numGTEsPerGT: buf.readUInt32LE(44),
    rgdOffset: u64(buf, 48, 'rgdOffset', file, base),
    gdOffset: gdRaw === GD_AT_END ? -1 : u64(buf, 56, 'gdOffset', file, base),
    overHead: u64(buf, 64, 'overHead', file, base),
    uncleanShutdown: buf[72],
    compressAlgorithm: buf.readUInt16LE(77),
  };
  const at = (off: number) => ({ file, offset: base + off });
  if (h.version < 1 || h.version > 3) {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unsupported sparse extent version ${h.version} (expected 1, 2 or 3)`, at(4));
  }
  if ((h.flags & ~KNOWN_FLAGS) !== 0) {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unknown sparse header flags 0x${h.flags.toString(16)}`, at(8));
  }
  if (h.flags & FLAG_NEWLINE_TEST) {
    if (buf[73] !== 0x0a || buf[74] !== 0x20 || buf[75] !== 0x0d || buf[76] !== 0x0a) {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', 'newline-detection bytes are mangled (was the file copied in text mode?)', at(73));
    }
  }
  if (h.grainSize < 1 || h.grainSize > MAX_GRAIN_SECTORS || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `grainSize ${h.grainSize} sectors is not a power of two between 1 and ${MAX_GRAIN_SECTORS}`, at(20));
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > MAX_GTES_PER_GT) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `numGTEsPerGT ${h.numGTEsPerGT} is not between 1 and ${MAX_GTES_PER_GT}`, at(44));
  }
  if (h.descriptorSize > MAX_EMBEDDED_DESCRIPTOR_SECTORS) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptorSize ${h.descriptorSize} sectors exceeds the limit of ${MAX_EMBEDDED_DESCRIPTOR_SECTORS}`, at(36));
  }
  if (h.descriptorSize > 0 && (h.descriptorOffset < 1 || h.descriptorOffset >= MAX_SPARSE_FILE_SECTORS)) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', `descriptorOffset ${h.descriptorOffset} is not a sector after the header`, at(28));
  }
  if (h.compressAlgorithm > 1) {
    throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unsupported compressAlgorithm ${h.compressAlgorithm} (expected 0 or 1 = deflate)`, at(77));
  }
  if (h.flags & FLAG_COMPRESSED && h.compressAlgorithm !== 1) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', 'compressed-grain flag set but compressAlgorithm is not deflate', at(77));
  }
  const gdEntries = gdEntryCount(h);
  if (gdEntries > MAX_GD_ENTRIES) {
    throw new VmdkFormatError(
      'ERR_VMDK_LIMIT',
      `capacity ${h.capacity} sectors needs ${gdEntries} grain directory entries, beyond the limit of ${MAX_GD_ENTRIES}`,
      at(12),
    );
  }
  if (h.gdOffset !== -1 && (h.gdOffset < 1 || h.gdOffset >= MAX_SPARSE_FILE_SECTORS)) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', `gdOffset ${h.gdOffset} is not a sector inside a sparse file`, at(56));
  }
  if (h.rgdOffset >= MAX_SPARSE_FILE_SECTORS) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', `rgdOffset ${h.rgdOffset} is beyond 2^32 sectors`, at(48));
  }
  return h;
}

/** True when a file's first bytes are a hosted sparse extent's magic ("KDMV"): not a text descriptor. */
export function isSparseExtent(head: Uint8Array): boolean {
  return head.length >= 4 && Buffer.from(head.buffer, head.byteOffset, 4).readUInt32LE(0) === SPARSE_MAGIC;
}

/** The embedded descriptor area of a sparse extent, in bytes from the start of the file. */
export interface EmbeddedDescriptorArea {
  offset: number;
  size: number;
}

/**
 * Where the file that starts with `head` keeps its embedded descriptor: undefined when it is not a
 * sparse extent (a text descriptor, a flat extent, a raw image). A sparse header is checked as
 * parseSparseHeader checks it (so its bounds hold: at most 1 MiB, after the header); one without a
 * descriptor area (the extents of a twoGbMaxExtentSparse disk) is ERR_VMDK_FORMAT, since the caller
 * took the file for a disk's descriptor.
 */
export function embeddedDescriptorArea(head: Buffer, file: string): EmbeddedDescriptorArea | undefined {
  if (head.length < SECTOR || !isSparseExtent(head)) return undefined;
  const h = parseSparseHeader(head, file);
  if (h.descriptorSize === 0) {
    throw new VmdkFormatError('ERR_VMDK_FORMAT', 'the sparse extent has no embedded descriptor area (descriptorSize is 0)', { file, offset: 36 });
  }
  return { offset: h.descriptorOffset * SECTOR, size: h.descriptorSize * SECTOR };
}

export function gdEntryCount(h: Pick<SparseHeader, 'capacity' | 'grainSize' | 'numGTEsPerGT'>): number {
  return Math.ceil(h.capacity / (h.grainSize * h.numGTEsPerGT));
}

/** Sectors one grain table occupies. */
export function gtSectors(h: Pick<SparseHeader, 'numGTEsPerGT'>): number {
  return Math.ceil((h.numGTEsPerGT * 4) / SECTOR);
}

export function serializeSparseHeader(h: SparseHeader): Buffer {
  const buf = Buffer.alloc(SECTOR);
  buf.writeUInt32LE(SPARSE_MAGIC, 0);
  buf.writeUInt32LE(h.version, 4);
  buf.writeUInt32LE(h.flags >>> 0, 8);
  buf.writeBigUInt64LE(BigInt(h.capacity), 12);
  buf.writeBigUInt64LE(BigInt(h.grainSize), 20);
  buf.writeBigUInt64LE(BigInt(h.descriptorOffset), 28);
  buf.writeBigUInt64LE(BigInt(h.descriptorSize), 36);
  buf.writeUInt32LE(h.numGTEsPerGT, 44);
  buf.writeBigUInt64LE(BigInt(h.rgdOffset), 48);
  buf.writeBigUInt64LE(h.gdOffset === -1 ? GD_AT_END : BigInt(h.gdOffset), 56);
  buf.writeBigUInt64LE(BigInt(h.overHead), 64);
  buf[72] = h.uncleanShutdown;
  buf[73] = 0x0a;
  buf[74] = 0x20;
  buf[75] = 0x0d;
  buf[76] = 0x0a;
  buf.writeUInt16LE(h.compressAlgorithm, 77);
  return buf;
}

/**
 * streamOptimized metadata marker, one sector: u64 numSectors (of the metadata that follows), u32 0,
 * u32 type. A grain marker instead has u64 lba, u32 compressed size, then the zlib data.
 */
export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

export function metadataMarker(numSectors: number, type: number): Buffer {
  const buf = Buffer.alloc(SECTOR);
  buf.writeBigUInt64LE(BigInt(numSectors), 0);
  buf.writeUInt32LE(type, 12);
  return buf;
}
