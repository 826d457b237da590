import { open, stat } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { readEncryptionParams } from '../disk/index.js';
import { ChainDisk, MAX_DESCRIPTOR_BYTES, openDisk as openVmdk } from '../vmdk/index.js';
import { SECTOR, embeddedDescriptorArea } from '../vmdk/sparse-header.js';
import { readFully } from '../util/file-io.js';
import type { LockerInfo, UnlockOptions } from '../keys/index.js';
import { decryptVmx, isEncryptedVmx, vmxLockers } from './vmx-crypt.js';
import { VmxFile } from './vmx-file.js';
import { findVmx, readVmxFile } from './vmx-io.js';
import { isMixed } from './all-or-none.js';
import { readVmJob, type VmJobOperation } from './folder-job.js';

/**
 * The hard disks a .vmx names and the encryption state of each, for `vmseal vm info`.
 *
 * A disk is an entry `<bus><n>:<m>.fileName` with bus scsi, ide, sata or nvme (key case-insensitive),
 * unless the device is not present (`<dev>.present = "FALSE"`), is a CD-ROM or floppy
 * (`<dev>.deviceType` names one), or names no file ("" or "auto detect"). A relative file name is
 * relative to the .vmx's folder.
 *
 * The state comes from the VMDK descriptor (a text file, or embedded in a sparse extent), read with
 * a bound and without keys:
 *   plain      no `encryption.*` / `ddb.encryption.*` line
 *   vmseal     `encryption.format = "vmseal/…"` (vmseal's format, docs/format.md)
 *   vmware     encryption lines without encryption.format: encrypted by VMware (Workstation's
 *              `dataFileKey`, or vSphere) in a format that is not public; not readable by vmseal, but
 *              encrypted for the all-or-none rule
 *   missing    no such file
 *   unreadable the file cannot be read, or vmseal's encryption lines are damaged (`detail` says why)
 */
export type VmDiskState = 'plain' | 'vmseal' | 'vmware' | 'missing' | 'unreadable';

export interface VmDisk {
  /** The device, e.g. `scsi0:0`, as the .vmx spells it. */
  device: string;
  /** The file name as the .vmx gives it. */
  fileName: string;
  /** The path of the disk (resolved against the .vmx's folder). */
  path: string;
  state: VmDiskState;
  /** For unreadable: why. */
  detail?: string;
  /**
   * For a snapshot chain (more than one layer): each layer from the top down to the base disk, with
   * its own state (a chain vmseal made has every layer encrypted under one DEK; a layer that is not
   * is damage worth seeing).
   */
  layers?: Array<{ path: string; state: VmDiskState; detail?: string }>;
}

export interface VmInfo {
  /** The .vmx file. */
  vmx: string;
  /** Whether the configuration (.vmx) is encrypted. */
  configEncrypted: boolean;
  /** The lockers of the config key (empty for a plain .vmx). */
  lockers: LockerInfo[];
  /** The hard disks, or null when the .vmx is encrypted and no key was given to read it. */
  disks: VmDisk[] | null;
  /** Disks whose state is vmseal or vmware. */
  encryptedDisks: number;
  /** Some disks encrypted and some plain (VMware's rule is all or none). */
  mixed: boolean;
  /**
   * The configuration holds `dataFileKey`, the key VMware Workstation encrypts a VM's disks with (false
   * when the .vmx is encrypted and no key was given: unknown).
   */
  holdsDiskKey: boolean;
  /** An interrupted `vm encrypt` / `vm decrypt` of the folder (its job file), until it is finished. */
  job?: { operation: VmJobOperation; started: string; stepsDone: number; steps: number };
}

const DISK_KEY = /^((?:scsi|ide|sata|nvme)[0-9]{1,3}:[0-9]{1,3})\.filename$/i;

/** The hard disks a parsed .vmx names, in file order (later lines for one device replace earlier ones). */
export function vmxDisks(vmx: VmxFile, vmxPath: string): Array<Pick<VmDisk, 'device' | 'fileName' | 'path'>> {
  const byDevice = new Map<string, Pick<VmDisk, 'device' | 'fileName' | 'path'>>();
  for (const line of vmx.lines) {
    const m = line.kind === 'entry' ? DISK_KEY.exec(line.key!) : null;
    if (!m) continue;
    const device = m[1]!;
    const fileName = vmx.get(line.key!)!;
    if ((vmx.get(`${device}.present`) ?? 'TRUE').toUpperCase() === 'FALSE') continue;
    if (/cdrom|floppy/i.test(vmx.get(`${device}.deviceType`) ?? '')) continue;
    if (fileName === '' || fileName.toLowerCase() === 'auto detect') continue;
    byDevice.set(device.toLowerCase(), { device, fileName, path: isAbsolute(fileName) ? fileName : join(dirname(vmxPath), fileName) });
  }
  return [...byDevice.values()];
}

/** The descriptor text of a VMDK (text file or embedded), or undefined when the file is not one (a raw image). */
async function descriptorText(path: string): Promise<string | undefined> {
  // A FIFO or device named by a .vmx would block the open or never end: only regular files are read.
  if (!(await stat(path)).isFile()) throw new Error(`${path} is not a regular file`);
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const head = Buffer.alloc(Math.min(size, SECTOR));
    await readFully(fh, head, 0);
    const area = embeddedDescriptorArea(head, path);
    if (area) {
      const buf = Buffer.alloc(Math.min(area.size, MAX_DESCRIPTOR_BYTES));
      const n = await readFully(fh, buf, area.offset);
      const text = buf.subarray(0, n);
      const nul = text.indexOf(0);
      return text.subarray(0, nul < 0 ? n : nul).toString('utf8');
    }
    if (size > MAX_DESCRIPTOR_BYTES) return undefined;
    const buf = Buffer.alloc(size);
    await readFully(fh, buf, 0);
    return buf.includes(0) ? undefined : buf.toString('utf8');
  } finally {
    await fh.close();
  }
}

/** The encryption state of one disk file (see VmDiskState). */
export async function diskState(path: string): Promise<{ state: VmDiskState; detail?: string }> {
  let text: string | undefined;
  try {
    text = await descriptorText(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' };
    return { state: 'unreadable', detail: err instanceof Error ? err.message : String(err) };
  }
  if (text === undefined) return { state: 'plain' };
  const keys = new Set<string>();
  for (const m of text.matchAll(/^[ \t]*([A-Za-z0-9_.:-]+)[ \t]*=/gm)) keys.add(m[1]!.toLowerCase());
  const encryptionKeys = [...keys].filter((k) => k.startsWith('encryption.') || k.startsWith('ddb.encryption.'));
  if (encryptionKeys.length === 0) return { state: 'plain' };
  if (!keys.has('encryption.format')) return { state: 'vmware' };
  try {
    await readEncryptionParams(path);
    return { state: 'vmseal' };
  } catch (err) {
    return { state: 'unreadable', detail: err instanceof Error ? err.message : String(err) };
  }
}

/** The layers of the snapshot chain topped by `path` with each one's state; undefined for a single-layer disk. */
async function chainLayers(path: string): Promise<VmDisk['layers']> {
  let paths: string[];
  try {
    const disk = await openVmdk(path, { readOnly: true, allowEncrypted: true });
    try {
      if (!(disk instanceof ChainDisk)) return undefined;
      paths = disk.layers().map((l) => l.path);
    } finally {
      await disk.close();
    }
  } catch (err) {
    // A parent that is missing or damaged: the chain cannot be walked; say so on the disk's own line.
    return [{ path, state: 'unreadable', detail: `its snapshot chain cannot be opened: ${err instanceof Error ? err.message : String(err)}` }];
  }
  const out: NonNullable<VmDisk['layers']> = [];
  for (const p of paths) out.push({ path: p, ...(await diskState(p)) });
  return out;
}

export interface InspectVmOptions {
  /** How to open an encrypted .vmx to list its disks (without it, `disks` is null for an encrypted .vmx). */
  keys?: UnlockOptions;
}

/** What `vmseal vm info` reports: whether the configuration is encrypted, its lockers, and each hard disk's state. */
export async function inspectVm(dirOrFile: string, options: InspectVmOptions = {}): Promise<VmInfo> {
  const vmx = await findVmx(dirOrFile);
  const bytes = await readVmxFile(vmx);
  let file = VmxFile.parse(bytes, vmx);
  const configEncrypted = isEncryptedVmx(file);
  const lockers = configEncrypted ? vmxLockers(file) : [];
  const pending = await readVmJob(dirname(vmx));
  const job = pending
    ? { job: { operation: pending.operation, started: pending.started, stepsDone: pending.steps.filter((s) => s.done).length, steps: pending.steps.length } }
    : {};
  if (configEncrypted) {
    if (options.keys === undefined) return { vmx, configEncrypted, lockers, disks: null, encryptedDisks: 0, mixed: false, holdsDiskKey: false, ...job };
    file = VmxFile.parse((await decryptVmx(bytes, options.keys, vmx)).plain, vmx);
  }
  const disks: VmDisk[] = [];
  for (const d of vmxDisks(file, vmx)) {
    const state = await diskState(d.path);
    const layers = state.state === 'vmseal' || state.state === 'plain' ? await chainLayers(d.path) : undefined;
    disks.push({ ...d, ...state, ...(layers ? { layers } : {}) });
  }
  const encryptedDisks = disks.filter((d) => d.state === 'vmseal' || d.state === 'vmware').length;
  return { vmx, configEncrypted, lockers, disks, encryptedDisks, mixed: isMixed(disks), holdsDiskKey: file.has('dataFileKey'), ...job };
}
