import { realpath, stat } from 'node:fs/promises';
import { isAbsolute, relative, resolve, dirname, extname, sep } from 'node:path';
import { Descriptor, MAX_DESCRIPTOR_BYTES } from './descriptor.js';
import { type VirtualDisk, VmdkDisk, type VmdkDiskInit } from './disk.js';
import { VmdkFormatError, interruptedJob, jobOf } from './errors.js';
import { openParents, parentLink } from './chain-open.js';
import { undoUnfinishedSnapshot } from './pending-snapshot.js';
import { type Extent, FlatExtent, ZeroExtent } from './extent.js';
import { HandlePool, HostFile } from './file.js';
import { COWD_MAGIC, SECTOR, SESPARSE_MAGIC, SPARSE_MAGIC } from './sparse-header.js';
import { SparseExtent } from './sparse-extent.js';
import { openCowdExtent } from './cowd-extent.js';
import { openSeSparseExtent } from './sesparse-extent.js';
import { isReadOnlySubformat, READ_ONLY_SUBFORMATS, readOnlySubformatError } from './read-only-formats.js';
import { expected, expectedOneOf } from '../errors.js';
import { acquireFileLock, FileLockError, holdsExclusiveLock, lockRecordPathFor } from '../util/lock.js';

export interface OpenDiskOptions {
  /** Open without write access; writes and descriptor updates are refused (default: `false`). */
  readOnly?: boolean;
  /** Open a disk that carries encryption lines as a plain disk, giving raw ciphertext access (default: `false`). */
  allowEncrypted?: boolean;
  /** Skip detection: `'vmdk'` or `'raw'` (default: by extension and content, see docs/vmdk.md). */
  format?: 'vmdk' | 'raw';
  /**
   * How much of a sparse extent's structure is checked before openDisk returns (default `'lazy'`).
   * `'lazy'`: header, directories and table placement at open, each grain table when first used — time
   * and memory follow the data, not the capacity. `'full'`: also every table now, and that no grain is
   * claimed by two entries (time ∝ allocated tables, memory 4 bytes per allocated grain); see docs/format.md.
   */
  check?: 'lazy' | 'full';
  /**
   * Open only this file, not the chain it may end (default `false`): a child's parents are neither
   * opened nor locked and its unallocated grains read as zeros. For jobs that move data between the
   * layers of a chain (snapshot commit), which lock and check every layer themselves.
   */
  layerOnly?: boolean;
}

/** createType values vmseal reads and writes (plus the VMFS flat aliases below, read only). */
export const SUPPORTED_SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized', 'vmfs'] as const;
/** VMFS flat variants (thin/thick only differ in how ESX allocates the file): read and written like vmfs. */
const VMFS_FLAT_ALIASES = new Set(['vmfsThin', 'vmfsPreallocated', 'vmfsEagerZeroedThick']);
const RAW_EXTENSIONS = new Set(['.raw', '.img']);

/**
 * The format a file is opened as before any byte of it is read: the one asked for, else raw for a
 * name ending .raw or .img; undefined when the first sector decides. A caller that only wants to
 * know whether a disk is encrypted skips opening a file this calls raw (a raw image never is).
 */
export function formatByName(path: string, format?: 'vmdk' | 'raw'): 'vmdk' | 'raw' | undefined {
  return format ?? (RAW_EXTENSIONS.has(extname(path).toLowerCase()) ? 'raw' : undefined);
}
/** The extent type of each read-only ESX subformat (docs/vmdk.md): its only one. */
const ESX_SPARSE_EXTENTS = new Map<string, 'VMFSSPARSE' | 'SESPARSE'>([
  ['vmfsSparse', 'VMFSSPARSE'],
  ['seSparse', 'SESPARSE'],
]);
/** Most extent lines a descriptor may have (a twoGbMaxExtent disk of ~20 TiB). */
export const MAX_EXTENTS = 9999;

/**
 * Open a VMDK (any supported subformat) or a raw image.
 * Detection: `options.format` if given; else `.raw`/`.img` files are raw without looking inside (so guest
 * data that looks like a VMDK header can never change how a raw image is read); else a file starting
 * with "KDMV" is a sparse VMDK with an embedded descriptor, a small UTF-8 text file that starts like a
 * descriptor is a text descriptor; any other `.vmdk` is refused (ERR_VMDK_FORMAT) and anything else is raw.
 */
export async function openDisk(path: string, options: OpenDiskOptions = {}): Promise<VirtualDisk> {
  return openDiskWith(path, options, true);
}

/**
 * openDisk for createDisk, which opens the disk it just made: not locked as a writer's (the new
 * file's name is its creator's to guard — a job reserves it — and a job staging an output must not
 * find a lock file beside it).
 */
export function openCreatedDisk(path: string, options: OpenDiskOptions): Promise<VirtualDisk> {
  return openDiskWith(path, options, false);
}

/**
 * A disk createDisk has just written, opened from the file it still holds (a monolithicSparse disk
 * without a parent, or a raw image), as openCreatedDisk would open it by name. Opening it again by
 * name cost five trips through libuv's pool (close, stat, open, fstat, statfs) per new disk, a tenth
 * of the trips of a small image's conversion, and would open whatever file had taken the name
 * meanwhile. The file is not in a handle pool (it is the disk's only one). On failure it is closed.
 * A sparse disk's `extent` and `descriptor` are the ones createDisk wrote, so neither is read back.
 */
export async function openCreatedFile(file: HostFile, kind: 'sparse' | 'raw', extent?: SparseExtent, descriptor?: Descriptor): Promise<VmdkDisk> {
  try {
    return kind === 'raw' ? openRaw(file, false) : await openEmbedded(file, [file], false, true, false, extent && { extent, descriptor });
  } catch (err) {
    await file.close();
    throw err;
  }
}

async function openDiskWith(path: string, options: OpenDiskOptions, lockWriters: boolean): Promise<VirtualDisk> {
  if (typeof path !== 'string' || path === '' || path.includes('\0')) {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a file path', 'path', path));
  }
  if (options === null || typeof options !== 'object') throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const readOnly = options.readOnly ?? false;
  const allowEncrypted = options.allowEncrypted ?? false;
  if (typeof readOnly !== 'boolean') throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a boolean', 'options.readOnly', readOnly));
  if (typeof allowEncrypted !== 'boolean') throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a boolean', 'options.allowEncrypted', allowEncrypted));
  if (options.format !== undefined && options.format !== 'vmdk' && options.format !== 'raw') {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expectedOneOf(['vmdk', 'raw'], 'options.format', options.format));
  }
  if (options.check !== undefined && options.check !== 'lazy' && options.check !== 'full') {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expectedOneOf(['lazy', 'full'], 'options.check', options.check));
  }
  if (options.layerOnly !== undefined && typeof options.layerOnly !== 'boolean') {
    throw new VmdkFormatError('ERR_INVALID_ARGUMENT', expected('a boolean', 'options.layerOnly', options.layerOnly));
  }
  const full = options.check === 'full';
  const abs = resolve(path);
  // A snapshot of this disk that a crash cut short made it read-only for a child that never came:
  // undone first (pending-snapshot.ts), so that the disk opens for writing without a manual step.
  if (!readOnly) await undoUnfinishedSnapshot(abs, () => layerFilesOf(abs, options.format));
  const top = await openLayer(abs, readOnly, allowEncrypted, options.format, full);
  if (lockWriters && !readOnly && options.layerOnly !== true && top instanceof VmdkDisk) await lockWriter(top, abs);
  if (options.layerOnly === true || !(top instanceof VmdkDisk) || parentLink(top.descriptor, abs) === undefined) return top;
  try {
    return await openParents(top, (p) => openLayer(p, true, allowEncrypted, undefined, full));
  } catch (err) {
    await top.close();
    throw err;
  }
}

/**
 * A disk opened for writing holds its vmseal lock (src/util/lock.ts) exclusively until it is closed
 * — unless this process holds it already (a job that locked the disk, then opens it) — as its
 * parents are held shared (chain-open.ts): no snapshot commit, in-place job or second writer can
 * run on the disk or under it meanwhile. On failure the disk is closed.
 */
async function lockWriter(top: VmdkDisk, abs: string): Promise<void> {
  const record = lockRecordPathFor(abs);
  if (holdsExclusiveLock(record)) return;
  try {
    const lock = await acquireFileLock(record, { mode: 'exclusive', coversOpens: false, record: { operation: 'open for writing', tool: 'vmseal' } });
    top.holdUntilClose(() => lock.release());
  } catch (err) {
    await top.close();
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new FileLockError('ERR_LOCK_BUSY', `cannot open ${abs} for writing: it is ${err.message}`, { file: err.file, holder: err.holder, cause: err });
    }
    throw err;
  }
}

/** The files of the layer `abs` (its descriptor and extents), read from it opened read-only (encrypted or not: only its files are asked). */
async function layerFilesOf(abs: string, formatOption: 'vmdk' | 'raw' | undefined): Promise<string[]> {
  const layer = await openLayer(abs, true, true, formatOption, false);
  try {
    return layer.files();
  } finally {
    await layer.close();
  }
}

/** Open one file as a disk (one layer of a chain: its parent, if any, is not opened). */
async function openLayer(abs: string, readOnly: boolean, allowEncrypted: boolean, formatOption: 'vmdk' | 'raw' | undefined, full: boolean): Promise<VmdkDisk> {
  if (!readOnly) await refuseReadOnlyFile(abs);
  // One bounded set of OS handles per disk: a twoGbMaxExtent disk may have thousands of extent files.
  const pool = new HandlePool();
  const main = await HostFile.open(abs, !readOnly, pool);
  const opened: HostFile[] = [main];
  try {
    const ext = extname(abs).toLowerCase();
    const format = formatByName(abs, formatOption);
    if (format === 'raw') return openRaw(main, readOnly);
    const head = Buffer.alloc(Math.min(SECTOR, main.size));
    await main.readExact(head, 0, 'the first sector');
    const magic = head.length >= 4 ? head.readUInt32LE(0) : -1;
    if (magic === COWD_MAGIC || magic === SESPARSE_MAGIC) {
      // Unlike a hosted sparse extent, these files hold no descriptor: the disk is its text descriptor.
      throw new VmdkFormatError(
        'ERR_VMDK_UNSUPPORTED',
        `this is the data file of a ${magic === COWD_MAGIC ? 'vmfsSparse ("COWD")' : 'seSparse'} disk, which holds no descriptor: open the disk's descriptor file (the small .vmdk that names it on an extent line)`,
        { file: abs, offset: 0 },
      );
    }
    if (magic === SPARSE_MAGIC) return await openEmbedded(main, opened, readOnly, allowEncrypted, full);
    if (looksLikeDescriptor(head)) return await openText(main, opened, readOnly, allowEncrypted, pool, full);
    if (format === 'vmdk' || ext === '.vmdk') {
      throw new VmdkFormatError(
        'ERR_VMDK_FORMAT',
        `wrong magic: neither a sparse extent header ("KDMV") nor a text descriptor ("# Disk DescriptorFile") in a file of ${main.size} bytes`,
        { file: abs, offset: 0 },
      );
    }
    return openRaw(main, readOnly);
  } catch (err) {
    for (const f of opened) await f.close();
    throw err;
  }
}

/**
 * A disk file without write permission is not opened for writing, even by root: vmseal makes a
 * layer read-only (mode 0444) when a snapshot child is made on it, and writing it would make the
 * child's parentCID stale.
 */
async function refuseReadOnlyFile(abs: string): Promise<void> {
  let mode: number;
  try {
    mode = (await stat(abs)).mode;
  } catch {
    return; // missing: HostFile.open reports it
  }
  if ((mode & 0o222) === 0) {
    throw new VmdkFormatError(
      'ERR_VMDK_READ_ONLY',
      'cannot open for writing: the file is read-only (mode 0444); a disk that has snapshot children is made read-only so that they stay valid — write the newest snapshot instead, or open it read-only',
      { file: abs },
    );
  }
}

function openRaw(file: HostFile, readOnly: boolean): VmdkDisk {
  return new VmdkDisk({
    path: file.path,
    format: 'raw',
    subformat: 'raw',
    descriptor: undefined,
    descriptorStore: { kind: 'none', why: 'raw images have no descriptor' },
    readOnly,
    extents: [new FlatExtent(file, 0, file.size, !readOnly)],
    hostFiles: [file],
  });
}

/**
 * A text descriptor starts with a comment or `version=` (after an optional BOM). Its text ends at the
 * first NUL (as in Descriptor.parse); what follows in the first sector must be NUL padding or stale
 * text, never binary data (control bytes other than TAB/LF/CR).
 *
 * Stale text is normal: when qemu writes a new CID it rewrites the descriptor in place, NUL-terminated,
 * without clearing the rest, and its CID has no leading zeros ("%x"). A new CID two or more digits
 * shorter than the old one leaves the old text's last bytes after the NUL, e.g. `...2147483647"\n\0\n\0\0`
 * (the CID is random: a few qemu writes in a thousand leave such a tail).
 */
function looksLikeDescriptor(head: Buffer): boolean {
  let text = head.toString('latin1');
  if (text.startsWith('\xEF\xBB\xBF')) text = text.slice(3);
  const nul = text.indexOf('\0');
  if (nul >= 0 && /[\x01-\x08\x0B\x0C\x0E-\x1F]/.test(text.slice(nul))) return false;
  return /^\s*(#\s*Disk DescriptorFile|version\s*=)/i.test(nul >= 0 ? text.slice(0, nul) : text);
}

async function openText(main: HostFile, opened: HostFile[], readOnly: boolean, allowEncrypted: boolean, pool: HandlePool, full: boolean): Promise<VmdkDisk> {
  if (main.size > MAX_DESCRIPTOR_BYTES) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `text descriptor is ${main.size} bytes, beyond the limit of ${MAX_DESCRIPTOR_BYTES}`, { file: main.path });
  }
  const bytes = Buffer.alloc(main.size);
  await main.readExact(bytes, 0, 'the descriptor');
  const descriptor = Descriptor.parse(bytes, { file: main.path });
  checkDescriptor(descriptor, main.path, allowEncrypted);
  // The descriptor file itself holds no data: keep it closed while the disk is open.
  opened.splice(opened.indexOf(main), 1);
  await main.close();
  const { extents, hostFiles } = await openExtents(descriptor, main.path, readOnly, opened, pool, full);
  return new VmdkDisk({
    path: main.path,
    format: 'vmdk',
    subformat: descriptor.createType,
    descriptor,
    descriptorStore: { kind: 'text' },
    readOnly,
    extents,
    hostFiles,
  });
}

/**
 * `created`: a file create.ts has just written, its extent (the directories are not read back) and
 * the descriptor it wrote into it (not read back and parsed again either).
 */
async function openEmbedded(
  main: HostFile,
  opened: HostFile[],
  readOnly: boolean,
  allowEncrypted: boolean,
  full: boolean,
  created?: { extent: SparseExtent; descriptor: Descriptor | undefined },
): Promise<VmdkDisk> {
  const sparse = created?.extent ?? (await SparseExtent.open(main, { writable: !readOnly, whyReadOnly: 'the disk was opened read-only' }));
  if (full) await sparse.checkStructure();
  const area = sparse.descriptorArea;
  let descriptor: Descriptor | undefined;
  if (area && created?.descriptor) {
    descriptor = created.descriptor.named(main.path);
  } else if (area) {
    const bytes = Buffer.alloc(area.size);
    await main.readExact(bytes, area.offset, 'the embedded descriptor');
    if (bytes[0] !== 0) descriptor = Descriptor.parse(bytes, { file: main.path });
  }
  let store: VmdkDiskInit['descriptorStore'];
  if (descriptor) {
    checkDescriptor(descriptor, main.path, allowEncrypted);
    const lines = descriptor.extents;
    if (lines.length !== 1 || lines[0].type !== 'SPARSE') {
      throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'an embedded descriptor must describe exactly one SPARSE extent (the file itself)', {
        file: main.path,
        line: lines[0]?.line,
      });
    }
    store = { kind: 'embedded', host: sparse };
  } else {
    // A bare sparse extent (e.g. one file of a twoGbMaxExtentSparse disk): describe it in memory.
    descriptor = Descriptor.parse(
      `# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicSparse"\n\n# Extent description\nRW ${sparse.header.capacity} SPARSE "${main.path
        .split(sep)
        .pop()!
        .replace(/["\r\n\0]/g, '_')}"\n`,
      { file: main.path },
    );
    store = { kind: 'none', why: 'this sparse extent has no embedded descriptor (open the disk through its descriptor file)' };
  }
  const line = descriptor.extents[0];
  if (line.sectors !== sparse.header.capacity) {
    throw new VmdkFormatError(
      'ERR_VMDK_CORRUPT',
      `capacity disagrees: the extent line says ${line.sectors} sectors, the sparse header ${sparse.header.capacity}`,
      { file: main.path, line: line.line },
    );
  }
  if (line.access !== 'RW') sparse.refuseWrites(`the extent on line ${line.line} is ${line.access}`);
  return new VmdkDisk({
    path: main.path,
    format: 'vmdk',
    subformat: descriptor.createType,
    descriptor,
    descriptorStore: store,
    readOnly,
    extents: [sparse],
    hostFiles: [main],
  });
}

/** Checks common to every descriptor before any extent is opened. */
function checkDescriptor(d: Descriptor, file: string, allowEncrypted: boolean): void {
  const type = d.createType;
  if (!(SUPPORTED_SUBFORMATS as readonly string[]).includes(type) && !VMFS_FLAT_ALIASES.has(type) && !isReadOnlySubformat(type)) {
    throw new VmdkFormatError(
      'ERR_VMDK_UNSUPPORTED',
      `unsupported subformat "${type.slice(0, 40)}" (supported: ${SUPPORTED_SUBFORMATS.join(', ')}; read only: ${READ_ONLY_SUBFORMATS.join(', ')})`,
      { file },
    );
  }
  parentLink(d, file); // a half or impossible parent link is refused before any extent is opened
  if (d.isEncrypted() && !allowEncrypted) {
    const job = jobOf(d);
    if (job !== undefined && d.get('encryption.format') === undefined) throw interruptedJob(job, file);
    throw new VmdkFormatError('ERR_DISK_ENCRYPTED', `${file} is encrypted; open it with keys`, { file });
  }
}

/** Whether `full` is not strictly inside `dir`. */
function leaves(dir: string, full: string): boolean {
  const rel = relative(dir, full);
  return rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel);
}

/** Resolve an extent file name; refuse absolute names and names that leave the descriptor's folder. */
export function resolveExtentPath(descriptorFile: string, name: string, line: number): string {
  const where = { file: descriptorFile, line };
  if (name === '' || name.includes('\0')) throw new VmdkFormatError('ERR_VMDK_FORMAT', 'extent file name is empty', where);
  if (isAbsolute(name) || /^[A-Za-z]:/.test(name) || name.startsWith('\\')) {
    throw new VmdkFormatError(
      'ERR_VMDK_EXTENT_FILE',
      `extent file name ${JSON.stringify(name.slice(0, 80))} is absolute; only names inside the disk's folder are accepted`,
      where,
    );
  }
  const dir = dirname(descriptorFile);
  const full = resolve(dir, name);
  if (leaves(dir, full)) {
    throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', `extent file name ${JSON.stringify(name.slice(0, 80))} leaves the disk's folder`, where);
  }
  return full;
}

/** A symbolic link may not lead an extent out of the disk's folder either. */
async function checkRealPath(descriptorFile: string, full: string, name: string, where: { file: string; line: number }): Promise<void> {
  let real: string;
  let realDir: string;
  try {
    [real, realDir] = await Promise.all([realpath(full), realpath(dirname(descriptorFile))]);
  } catch {
    return; // missing: HostFile.open reports it
  }
  if (leaves(realDir, real)) {
    throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', `extent file ${JSON.stringify(name.slice(0, 80))} is a link that leaves the disk's folder`, where);
  }
}

async function openExtents(
  d: Descriptor,
  descriptorFile: string,
  readOnly: boolean,
  opened: HostFile[],
  pool: HandlePool,
  fullCheck: boolean,
): Promise<{ extents: Extent[]; hostFiles: HostFile[] }> {
  if (d.extents.length > MAX_EXTENTS) {
    throw new VmdkFormatError('ERR_VMDK_LIMIT', `descriptor has ${d.extents.length} extent lines, more than the limit of ${MAX_EXTENTS}`, {
      file: descriptorFile,
    });
  }
  const extents: Extent[] = [];
  const byPath = new Map<string, { file: HostFile; sparse: boolean }>();
  const subformat = d.createType;
  for (const line of d.extents) {
    const where = { file: descriptorFile, line: line.line };
    const size = line.sectors * SECTOR;
    if (line.access === 'NOACCESS') throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', 'NOACCESS extents are not supported', where);
    const writable = !readOnly && line.access === 'RW';
    const why = readOnly ? 'the disk was opened read-only' : `the extent on line ${line.line} is ${line.access}`;
    switch (line.type) {
      case 'ZERO':
        extents.push(new ZeroExtent(size));
        continue;
      case 'FLAT':
      case 'VMFS':
      case 'SPARSE':
      case 'VMFSSPARSE':
      case 'SESPARSE':
        break;
      default:
        throw new VmdkFormatError('ERR_VMDK_UNSUPPORTED', `unsupported extent type ${line.type.slice(0, 20)}`, where);
    }
    if (line.file === undefined) throw new VmdkFormatError('ERR_VMDK_FORMAT', `${line.type} extent has no file name`, where);
    const esx = ESX_SPARSE_EXTENTS.get(subformat);
    if (esx !== undefined || line.type === 'VMFSSPARSE' || line.type === 'SESPARSE') {
      // vmfsSparse and seSparse disks are made of their own extent type only, and never written.
      if (line.type !== esx) throw new VmdkFormatError('ERR_VMDK_FORMAT', `${line.type} extent in a ${subformat} disk`, where);
      if (!readOnly) throw readOnlySubformatError(subformat, descriptorFile);
    } else if ((line.type === 'SPARSE') !== subformat.toLowerCase().includes('sparse') && subformat !== 'streamOptimized') {
      throw new VmdkFormatError('ERR_VMDK_FORMAT', `${line.type} extent in a ${subformat} disk`, where);
    }
    const full = resolveExtentPath(descriptorFile, line.file, line.line);
    await checkRealPath(descriptorFile, full, line.file, where);
    if (full === descriptorFile)
      throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', 'an extent of a text descriptor cannot be the descriptor file itself', where);
    const sparse = line.type !== 'FLAT' && line.type !== 'VMFS';
    let entry = byPath.get(full);
    if (entry && (sparse || entry.sparse)) {
      throw new VmdkFormatError('ERR_VMDK_CORRUPT', `extent file ${line.file} is used by two extents, one of them sparse`, where);
    }
    if (!entry) {
      let file: HostFile;
      try {
        file = await HostFile.open(full, writable, pool);
      } catch (err) {
        if (err instanceof VmdkFormatError && err.code === 'ERR_VMDK_EXTENT_FILE') {
          throw new VmdkFormatError('ERR_VMDK_EXTENT_FILE', `extent file ${JSON.stringify(line.file.slice(0, 80))} is missing or not a file (${full})`, {
            ...where,
            cause: err,
          });
        }
        throw err;
      }
      opened.push(file);
      entry = { file, sparse };
      byPath.set(full, entry);
    }
    if (esx !== undefined) {
      const ext = esx === 'VMFSSPARSE' ? await openCowdExtent(entry.file, subformat) : await openSeSparseExtent(entry.file, subformat);
      if (ext.size !== size) {
        throw new VmdkFormatError(
          'ERR_VMDK_CORRUPT',
          `capacity disagrees: the extent line says ${line.sectors} sectors, the ${subformat} header of ${line.file} ${ext.size / SECTOR}`,
          where,
        );
      }
      if (fullCheck) await ext.checkStructure();
      extents.push(ext);
    } else if (sparse) {
      const ext = await SparseExtent.open(entry.file, { writable: writable && entry.file.writable, whyReadOnly: why });
      if (fullCheck) await ext.checkStructure();
      if (ext.header.capacity !== line.sectors) {
        throw new VmdkFormatError(
          'ERR_VMDK_CORRUPT',
          `capacity disagrees: the extent line says ${line.sectors} sectors, the sparse header of ${line.file} ${ext.header.capacity}`,
          where,
        );
      }
      extents.push(ext);
    } else {
      const base = line.offset * SECTOR;
      if (base + size > entry.file.size) {
        throw new VmdkFormatError('ERR_VMDK_TRUNCATED', `flat extent file ${line.file} has ${entry.file.size} bytes, the extent needs ${base + size}`, where);
      }
      extents.push(new FlatExtent(entry.file, base, size, writable && entry.file.writable, line.type as 'FLAT' | 'VMFS', why));
    }
  }
  return { extents, hostFiles: [...byPath.values()].map((e) => e.file) };
}
