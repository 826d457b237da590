import { randomBytes } from 'node:crypto';
import { basename, dirname, extname, join, resolve } from 'node:path';
import { Descriptor, MAX_DESCRIPTOR_BYTES } from './descriptor.js';
import { ChainDisk } from './chain.js';
import { type VirtualDisk, VmdkDisk } from './disk.js';
import { VmdkFormatError } from './errors.js';
import { HostFile, type NewFile } from './file.js';
import { GTES_PER_GT, sparseOverheadSectors } from './sparse-fit.js';
import { openCreatedDisk, openCreatedFile } from './open.js';
import {
  FLAG_NEWLINE_TEST,
  FLAG_RGD,
  MAX_GD_ENTRIES,
  MAX_SPARSE_FILE_SECTORS,
  SECTOR,
  type SparseHeader,
  gdEntryCount,
  gtSectors,
  serializeSparseHeader,
} from './sparse-header.js';
import { SparseExtent } from './sparse-extent.js';
import { StreamWriterExtent } from './stream-writer.js';
import { CREATE_SUBFORMATS, type CreateSubformat } from './subformats.js';
import { expected, expectedOneOf } from '../errors.js';

export { CREATE_SUBFORMATS, type CreateSubformat };
export const ADAPTER_TYPES = ['ide', 'buslogic', 'lsilogic', 'legacyESX'] as const;

/** ddb.uuid as VMware and qemu write it: 16 bytes, hex pairs separated by spaces or dashes. */
const UUID_RE = /^[0-9A-Fa-f]{2}(?:[ -][0-9A-Fa-f]{2}){15}$/;

/** True when `value` is a ddb.uuid createVmdk accepts (`options.uuid`). */
export function isDiskUuid(value: unknown): value is string {
  return typeof value === 'string' && UUID_RE.test(value);
}

export interface CreateDiskOptions {
  /** Virtual size in bytes, a positive multiple of 512. */
  capacity: number;
  /** (default: `'monolithicSparse'`) */
  subformat?: CreateSubformat;
  /** ddb.adapterType (default: `'ide'`); also picks the geometry (ide: 16 heads, others 255). */
  adapterType?: (typeof ADAPTER_TYPES)[number];
  /** ddb.virtualHWVersion (default: `4`, like qemu-img). */
  hwVersion?: number | string;
  /** Grain size in bytes for sparse subformats: a power of two from 4096 to 1 MiB (default: `65536`). */
  grainSize?: number;
  /** Extra descriptor lines placed right after createType (ddb.* keys go into the disk database). */
  descriptorLines?: Array<[key: string, value: string]>;
  /**
   * ddb.uuid: 16 bytes in hex pairs separated by spaces or dashes, as VMware writes it (default: 16
   * random bytes). Given when a disk is rewritten in place of itself, so that it stays the same disk
   * to whoever tracks it by its uuid (vSphere, a backup history).
   */
  uuid?: string;
  /** Largest extent of the twoGbMaxExtent* subformats in bytes: a multiple of 512 (flat) or of the grain size (sparse) (default: 2 GiB). */
  maxExtentSize?: number;
  /** Replace existing files instead of failing with ERR_VMDK_EXISTS (default: `false`). */
  overwrite?: boolean;
  /**
   * Whether the folder the files are made in is memory-backed (tmpfs, ramfs), when the caller
   * knows it (a job's one statfs of its output folder): spares each new file the statfs that
   * decides its inline I/O (src/util/inline-io.ts). Default: each file asks.
   * @internal
   */
  memoryBacked?: boolean;
  /**
   * Make a snapshot child (monolithicSparse or twoGbMaxExtentSparse only): `parentCID` is `cid`, the
   * parent's CID now, and `parentFileNameHint` is `fileNameHint` (relative to the child's folder).
   * createSnapshot (src/vmdk/snapshot.ts) checks the parent and fills these in.
   */
  parent?: { cid: string; fileNameHint: string };
}

/** Grain of a new sparse disk when none is asked for (qemu-img's). */
export const DEFAULT_GRAIN = 65536;
const TWO_GIB = 2 ** 31;
/** Sectors reserved for an embedded descriptor, like qemu (10 KiB); more when the initial text needs it. */
const DEFAULT_DESCRIPTOR_SECTORS = 20;

function arg(message: string): VmdkFormatError {
  return new VmdkFormatError('ERR_INVALID_ARGUMENT', message);
}

/**
 * Create a new disk and return it open for writing. Sparse subformats start with every grain
 * unallocated; flat ones are host-sparse files of the full size. A streamOptimized disk is write-once:
 * write it front to back, then close() finishes the stream (see docs/vmdk.md).
 */
export async function createDisk(path: string, options: CreateDiskOptions): Promise<VirtualDisk> {
  return createDiskNamed(path, options, undefined);
}

/**
 * createDisk, except that a monolithicSparse disk's embedded extent line names `extentName` instead
 * of the file's own name: a disk made under a temporary name and then renamed into place
 * (src/vmdk/snapshot.ts) says its final name.
 */
export async function createDiskNamed(path: string, options: CreateDiskOptions, extentName: string | undefined): Promise<VirtualDisk> {
  const made = await makeDisk(path, options, extentName);
  // The kind comes from the subformat, never from the name: a VMDK named `.img` is still a VMDK.
  return typeof made === 'string' ? fresh(await openCreatedDisk(made, { allowEncrypted: true, format: 'vmdk' })) : made;
}

/**
 * The file of a new, empty monolithicSparse snapshot child (`options.parent` required), written and
 * fsynced but not opened: opening it opens its parents and takes their shared locks, which the
 * caller — createSnapshot, holding the parent's lock exclusively while it makes the child aside
 * under a temporary name (`extentName` the final one, as for createDiskNamed) — would conflict with.
 */
export async function createChildFile(path: string, options: CreateDiskOptions, extentName: string | undefined): Promise<void> {
  if (options === null || typeof options !== 'object') throw arg(expected('an object', 'options', options));
  if (options.parent === undefined || (options.subformat ?? 'monolithicSparse') !== 'monolithicSparse') {
    throw arg('createChildFile makes a monolithicSparse snapshot child: options.parent is required');
  }
  const made = await makeDisk(path, options, extentName);
  if (typeof made !== 'string') await made.close();
}

/** createDiskNamed's files: the disk open for writing, or its path when it is to be opened by name (its extents written and closed). */
async function makeDisk(path: string, options: CreateDiskOptions, extentName: string | undefined): Promise<VirtualDisk | string> {
  if (typeof path !== 'string' || path === '' || path.includes('\0')) throw arg(expected('a file path', 'path', path));
  if (options === null || typeof options !== 'object') throw arg(expected('an object', 'options', options));
  const { capacity } = options;
  const subformat = options.subformat ?? 'monolithicSparse';
  if (typeof capacity !== 'number' || !Number.isSafeInteger(capacity) || capacity <= 0 || capacity % SECTOR !== 0) {
    throw arg(expected('a positive multiple of 512', 'options.capacity', capacity));
  }
  if (!CREATE_SUBFORMATS.includes(subformat)) throw arg(expectedOneOf(CREATE_SUBFORMATS, 'options.subformat', subformat));
  const adapterType = options.adapterType ?? 'ide';
  if (!(ADAPTER_TYPES as readonly string[]).includes(adapterType)) throw arg(expectedOneOf(ADAPTER_TYPES, 'options.adapterType', adapterType));
  const hw = String(options.hwVersion ?? 4);
  if (!/^[1-9][0-9]{0,2}$/.test(hw)) throw arg(expected('an integer from 1 to 999', 'options.hwVersion', options.hwVersion));
  const grainBytes = options.grainSize ?? DEFAULT_GRAIN;
  if (typeof grainBytes !== 'number' || !Number.isInteger(grainBytes) || grainBytes < 4096 || grainBytes > 1 << 20 || (grainBytes & (grainBytes - 1)) !== 0) {
    throw arg(expected('a power of two from 4096 to 1048576', 'options.grainSize', options.grainSize));
  }
  const maxExtent = options.maxExtentSize ?? TWO_GIB;
  const extentUnit = subformat === 'twoGbMaxExtentSparse' ? grainBytes : SECTOR;
  if (typeof maxExtent !== 'number' || !Number.isSafeInteger(maxExtent) || maxExtent <= 0 || maxExtent % extentUnit !== 0) {
    throw arg(expected(`a positive multiple of ${extentUnit}`, 'options.maxExtentSize', options.maxExtentSize));
  }
  const lines = options.descriptorLines ?? [];
  if (!Array.isArray(lines) || lines.some((l) => !Array.isArray(l) || l.length !== 2 || typeof l[0] !== 'string' || typeof l[1] !== 'string')) {
    throw arg('Expected an array of [key, value] string pairs for options.descriptorLines');
  }
  if (options.uuid !== undefined && !isDiskUuid(options.uuid)) {
    throw arg(expected('16 bytes as hex pairs separated by spaces or dashes', 'options.uuid', options.uuid));
  }
  if (options.memoryBacked !== undefined && typeof options.memoryBacked !== 'boolean') {
    throw arg(expected('a boolean', 'options.memoryBacked', options.memoryBacked));
  }
  // How every file of the disk is made: replacing an existing one or not, and what its folder is.
  const how: NewFile = { overwrite: options.overwrite ?? false, memoryBacked: options.memoryBacked };
  const parent = options.parent;
  if (parent !== undefined) {
    if (subformat !== 'monolithicSparse' && subformat !== 'twoGbMaxExtentSparse') {
      throw arg(`a snapshot child is monolithicSparse or twoGbMaxExtentSparse, not ${subformat} (options.parent)`);
    }
    if (parent === null || typeof parent !== 'object' || typeof parent.cid !== 'string' || !/^[0-9a-f]{1,8}$/.test(parent.cid)) {
      throw arg(expected('{ cid: up to 8 lowercase hex digits, fileNameHint }', 'options.parent', parent));
    }
    if (parent.cid === 'ffffffff' || typeof parent.fileNameHint !== 'string' || parent.fileNameHint === '' || /["\r\n\0]/.test(parent.fileNameHint)) {
      throw arg(expected("a CID other than ffffffff and a file name without '\"', CR, LF or NUL", 'options.parent', parent));
    }
  }
  const abs = resolve(path);

  if (subformat === 'raw') {
    const f = await HostFile.create(abs, how);
    try {
      await f.truncate(capacity);
    } catch (err) {
      await f.close();
      throw err;
    }
    return openCreatedFile(f, 'raw');
  }

  const sectors = capacity / SECTOR;
  const grainSectors = grainBytes / SECTOR;
  const dir = dirname(abs);
  const stem = basename(abs, extname(abs));
  const descriptor = buildDescriptor(subformat, sectors, adapterType, hw, lines, parent, options.uuid);
  const extentLine = (access: string, n: number, type: string, file: string, offset?: number) =>
    `${access} ${n} ${type} "${file}"${offset === undefined ? '' : ` ${offset}`}`;

  switch (subformat) {
    case 'monolithicFlat':
    case 'vmfs': {
      const name = extentFileNames(stem, subformat, [capacity])[0];
      // qemu accepts an offset on FLAT lines only; VMware writes VMFS lines without one.
      const d = descriptor([subformat === 'vmfs' ? extentLine('RW', sectors, 'VMFS', name) : extentLine('RW', sectors, 'FLAT', name, 0)]);
      await createFlatFile(join(dir, name), capacity, how);
      await writeTextDescriptor(abs, d, how);
      break;
    }
    case 'twoGbMaxExtentFlat': {
      const parts = split(capacity, maxExtent);
      const names = extentFileNames(stem, subformat, parts);
      const d = descriptor(parts.map((bytes, i) => extentLine('RW', bytes / SECTOR, 'FLAT', names[i], 0)));
      for (let i = 0; i < parts.length; i++) await createFlatFile(join(dir, names[i]), parts[i], how);
      await writeTextDescriptor(abs, d, how);
      break;
    }
    case 'twoGbMaxExtentSparse': {
      const parts = split(capacity, maxExtent);
      const names = extentFileNames(stem, subformat, parts);
      const d = descriptor(parts.map((bytes, i) => extentLine('RW', bytes / SECTOR, 'SPARSE', names[i])));
      for (let i = 0; i < parts.length; i++) await (await createSparseFile(join(dir, names[i]), parts[i] / SECTOR, grainSectors, undefined, how)).file.close();
      await writeTextDescriptor(abs, d, how);
      break;
    }
    case 'monolithicSparse': {
      const d = descriptor([extentLine('RW', sectors, 'SPARSE', extentName ?? basename(abs))]);
      const made = await createSparseFile(abs, sectors, grainSectors, d, how);
      // A snapshot child is opened with its parents, by name, below; fsynced first, so that it is
      // whole on disk before anything (createSnapshot's rename) makes it a layer of a chain.
      if (parent !== undefined) {
        try {
          await made.file.sync();
        } finally {
          await made.file.close();
        }
        break;
      }
      // Opened from the directories just written, not by reading them back (2 × 2 MiB at 16 TiB).
      const extent = await SparseExtent.created(made.file, made.header, made.gd, made.rgd, { writable: true, whyReadOnly: 'the disk was opened read-only' });
      return fresh(await openCreatedFile(made.file, 'sparse', extent, d));
    }
    case 'streamOptimized': {
      const d = descriptor([extentLine('RW', sectors, 'SPARSE', basename(abs))]);
      checkSparseCapacity(sectors, grainSectors, DEFAULT_DESCRIPTOR_SECTORS);
      const text = Buffer.from(d.toString(), 'utf8');
      const descSectors = embeddedDescriptorSectors(text.length);
      const file = await HostFile.create(abs, how);
      try {
        const ext = await StreamWriterExtent.create(file, sectors, grainSectors, text, descSectors);
        return fresh(
          new VmdkDisk({
            path: abs,
            format: 'vmdk',
            subformat,
            descriptor: d,
            descriptorStore: { kind: 'embedded', host: ext },
            readOnly: false,
            extents: [ext],
            hostFiles: [file],
          }),
        );
      } catch (err) {
        await file.close();
        throw err;
      }
    }
  }
  return abs;
}

/** A disk createDisk just made keeps the CID it was made with on its first write (VmdkDisk.markCidFresh). */
function fresh(disk: VirtualDisk): VirtualDisk {
  const top = disk instanceof ChainDisk ? disk.top : disk;
  if (top instanceof VmdkDisk) top.markCidFresh();
  return disk;
}

/** Extent file names (besides the descriptor) of a new disk whose descriptor is `<stem>.<ext>`. */
function extentFileNames(stem: string, subformat: CreateSubformat, parts: number[]): string[] {
  switch (subformat) {
    case 'monolithicFlat':
    case 'vmfs':
      return [`${stem}-flat.vmdk`];
    case 'twoGbMaxExtentFlat':
      return parts.map((_, i) => `${stem}-f${String(i + 1).padStart(3, '0')}.vmdk`);
    case 'twoGbMaxExtentSparse':
      return parts.map((_, i) => `${stem}-s${String(i + 1).padStart(3, '0')}.vmdk`);
    default:
      return [];
  }
}

/**
 * The files createDisk will make for these options, as absolute paths, the descriptor (or only
 * file) first: a job reserves and checks every one of them before creating any.
 */
export function plannedDiskFiles(path: string, options: Pick<CreateDiskOptions, 'capacity' | 'subformat' | 'maxExtentSize'>): string[] {
  const abs = resolve(path);
  const subformat = options.subformat ?? 'monolithicSparse';
  const twoGb = subformat === 'twoGbMaxExtentFlat' || subformat === 'twoGbMaxExtentSparse';
  const parts = twoGb ? split(options.capacity, options.maxExtentSize ?? TWO_GIB) : [options.capacity];
  const dir = dirname(abs);
  return [abs, ...extentFileNames(basename(abs, extname(abs)), subformat, parts).map((n) => join(dir, n))];
}

function split(capacity: number, max: number): number[] {
  const parts: number[] = [];
  for (let left = capacity; left > 0; left -= max) parts.push(Math.min(max, left));
  if (parts.length > 9999) throw arg(`capacity ${capacity} would need ${parts.length} extent files (at most 9999)`);
  return parts;
}

/** Build a descriptor in qemu-img's layout; the caller supplies the extent lines. */
function buildDescriptor(
  subformat: string,
  sectors: number,
  adapterType: string,
  hw: string,
  extra: Array<[string, string]>,
  parent: CreateDiskOptions['parent'],
  keptUuid: string | undefined,
) {
  return (extentLines: string[]): Descriptor => {
    const heads = adapterType === 'ide' ? 16 : 255;
    const cylinders = Math.floor(sectors / (heads * 63));
    // One call for both: the CID (4 bytes as 8 hex digits) and the UUID (16 as hex pairs and spaces).
    const random = randomBytes(keptUuid === undefined ? 20 : 4);
    const cid = random.toString('hex', 0, 4);
    const uuid = keptUuid ?? random.toString('hex', 4, 20).match(/../g)!.join(' ');
    const text = [
      '# Disk DescriptorFile',
      'version=1',
      `CID=${cid}`,
      `parentCID=${parent?.cid ?? 'ffffffff'}`,
      `createType="${subformat}"`,
      // Where qemu puts it: right after createType.
      ...(parent ? [`parentFileNameHint="${parent.fileNameHint}"`] : []),
      '',
      '# Extent description',
      ...extentLines,
      '',
      '# The Disk Data Base',
      '#DDB',
      '',
      `ddb.virtualHWVersion = "${hw}"`,
      `ddb.geometry.cylinders = "${cylinders}"`,
      `ddb.geometry.heads = "${heads}"`,
      'ddb.geometry.sectors = "63"',
      `ddb.adapterType = "${adapterType}"`,
      'ddb.toolsVersion = "2147483647"',
      `ddb.uuid = "${uuid}"`,
      '',
    ].join('\n');
    const d = Descriptor.parse(text);
    for (const [key, value] of extra) {
      if (d.has(key)) throw arg(`options.descriptorLines sets "${key}", which vmseal writes itself`);
      d.set(key, value);
    }
    if (Buffer.byteLength(d.toString(), 'utf8') > MAX_DESCRIPTOR_BYTES)
      throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptor would exceed ${MAX_DESCRIPTOR_BYTES} bytes`);
    return d;
  };
}

/** Sectors for an embedded descriptor: qemu's 20, or twice the initial text so later edits fit. */
function embeddedDescriptorSectors(textBytes: number): number {
  return Math.max(DEFAULT_DESCRIPTOR_SECTORS, Math.ceil((2 * textBytes) / SECTOR));
}

/**
 * A sparse extent file of any capacity whose empty layout fits (sparse-fit.ts): the 2 TiB limit is on
 * file offsets, so it is the data written later that may not fit — SparseExtent refuses the write that
 * would pass it, and a copy checks sparseFileFits up front. Refused here: a directory beyond
 * MAX_GD_ENTRIES, or metadata alone past 2 TiB.
 */
function checkSparseCapacity(sectors: number, grainSectors: number, descriptorSectors: number): void {
  const gd = gdEntryCount({ capacity: sectors, grainSize: grainSectors, numGTEsPerGT: GTES_PER_GT });
  if (gd > MAX_GD_ENTRIES || sparseOverheadSectors(sectors, grainSectors, descriptorSectors) > MAX_SPARSE_FILE_SECTORS) {
    throw arg(
      `capacity of ${sectors} sectors is too large for one sparse extent (its grain directory would have ${gd} entries, beyond ${MAX_GD_ENTRIES}, with grains of ${grainSectors} sectors)`,
    );
  }
}

async function createFlatFile(path: string, bytes: number, how: NewFile): Promise<void> {
  const f = await HostFile.create(path, how);
  try {
    await f.truncate(bytes);
  } finally {
    await f.close();
  }
}

async function writeTextDescriptor(path: string, d: Descriptor, how: NewFile): Promise<void> {
  const f = await HostFile.create(path, how);
  try {
    await f.writeAt(d.toBuffer(), 0);
  } finally {
    await f.close();
  }
}

/**
 * A hosted sparse extent in qemu-img's layout: header, [descriptor], RGD, RGTs, GD, GTs (all tables
 * preallocated, zero), first grain at the next grain boundary. The tables are holes until written;
 * the two directories must be written (qemu cannot allocate a table for a GD entry of 0), once each.
 * Returned open with the header and directories as written (the caller closes the file or opens the
 * disk from them).
 */
async function createSparseFile(
  path: string,
  sectors: number,
  grainSectors: number,
  d: Descriptor | undefined,
  how: NewFile,
): Promise<{ file: HostFile; header: SparseHeader; gd: Uint32Array; rgd: Uint32Array }> {
  const text = d ? Buffer.from(d.toString(), 'utf8') : undefined;
  const descSectors = text ? embeddedDescriptorSectors(text.length) : 0;
  const gdEntries = gdEntryCount({ capacity: sectors, grainSize: grainSectors, numGTEsPerGT: 512 });
  const gdSec = Math.ceil((gdEntries * 4) / SECTOR);
  const gtSec = gtSectors({ numGTEsPerGT: 512 });
  const rgd = 1 + descSectors;
  const gd = rgd + gdSec + gdEntries * gtSec;
  checkSparseCapacity(sectors, grainSectors, descSectors);
  const overHead = sparseOverheadSectors(sectors, grainSectors, descSectors);
  const header: SparseHeader = {
    version: 1,
    flags: FLAG_NEWLINE_TEST | FLAG_RGD,
    capacity: sectors,
    grainSize: grainSectors,
    descriptorOffset: text ? 1 : 0,
    descriptorSize: descSectors,
    numGTEsPerGT: 512,
    rgdOffset: rgd,
    gdOffset: gd,
    overHead,
    uncleanShutdown: 0,
    compressAlgorithm: 0,
  };
  // Each directory lists its tables in order right after it; written from the entries' own memory,
  // padded to whole sectors (little-endian: the byte order of every platform Node runs on; checked).
  const directory = (first: number) => {
    const padded = new Uint32Array((gdSec * SECTOR) / 4);
    for (let i = 0; i < gdEntries; i++) padded[i] = first + gdSec + i * gtSec;
    return { entries: padded.subarray(0, gdEntries), bytes: leView(padded) };
  };
  const rgdDir = directory(rgd);
  const gdDir = directory(gd);
  const f = await HostFile.create(path, how);
  try {
    const head = Buffer.alloc((1 + descSectors) * SECTOR);
    serializeSparseHeader(header).copy(head, 0);
    if (text) head.set(text, SECTOR);
    await f.writeAt(head, 0);
    await f.writeAt(rgdDir.bytes, rgd * SECTOR);
    await f.writeAt(gdDir.bytes, gd * SECTOR);
    await f.truncate(overHead * SECTOR);
    return { file: f, header, gd: gdDir.entries, rgd: rgdDir.entries };
  } catch (err) {
    await f.close();
    throw err;
  }
}

/** The little-endian bytes of u32 entries: their own memory on a little-endian host, else a swapped copy. */
function leView(a: Uint32Array): Uint8Array {
  if (new Uint8Array(new Uint16Array([1]).buffer)[0] === 1) return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const b = Buffer.alloc(a.byteLength);
  for (let i = 0; i < a.length; i++) b.writeUInt32LE(a[i], i * 4);
  return b;
}
