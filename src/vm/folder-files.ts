/**
 * The files of a VM folder, as one list: what `vm encrypt`, `vm decrypt`, `vm info` and `vm rekey`
 * walk. A VMware folder is described by its .vmx, a qemu folder by vmseal-vm.json (manifest.ts):
 *
 *   disks        every hard disk the configuration names, each with its snapshot chain: the file
 *                named (the top) and its parents down to the base disk, and every file of every
 *                layer (descriptors and extents);
 *   state files  the .nvram the .vmx names (`nvram = …`, default `<vmx name>.nvram`), the snapshot
 *                and suspend state files in the folder (`*.vmsn`, `*.vmem`, `*.vmss`), and a qemu
 *                folder's UEFI variables file; each plain or in vmseal's container (state-file.ts);
 *   snapshotDb   the .vmsd (VMware's snapshot list: names and file names, no guest data), which
 *                stays in the clear.
 *
 * Listing reads descriptors and headers only, never a key; a missing or unreadable disk is listed
 * with that state and its one file, so that `vm info` can still report it.
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ChainDisk, openDisk as openVmdk } from '../vmdk/index.js';
import type { UnlockOptions } from '../keys/index.js';
import { diskState, vmxDisks, type VmDiskState, type VmInfo } from './config-disks.js';
import { isMixed } from './all-or-none.js';
import { readVmJob } from './folder-job.js';
import { VmError } from './errors.js';
import { readManifest, resolveInFolder, manifestPath, MANIFEST_NAME } from './manifest.js';
import { isStateFile } from './state-file.js';
import { decryptVmx, isEncryptedVmx } from './vmx-crypt.js';
import { VmxFile } from './vmx-file.js';
import { findVmx, readVmxFile } from './vmx-io.js';

export interface VmFolderDisk {
  /** `scsi0:0` … for a .vmx; `disks[i]` for a qemu manifest. */
  device: string;
  /** The file name as the configuration gives it. */
  fileName: string;
  /** The disk the VM uses: the top of its chain. */
  path: string;
  /** The chain's layers, the top first, down to the base disk (one entry for a disk without snapshots). */
  layers: string[];
  /** Every file of every layer (descriptors and extents), the top's first. */
  files: string[];
  state: VmDiskState;
  /** For unreadable: why. */
  detail?: string;
}

export type VmStateFileKind = 'nvram' | 'vmsn' | 'vmem' | 'vmss' | 'uefi-vars';

export interface VmStateFileEntry {
  path: string;
  kind: VmStateFileKind;
  /** Whether the file is in vmseal's container (its magic; see isStateFile). */
  encrypted: boolean;
}

export interface VmFolderFiles {
  /** The VM folder. */
  dir: string;
  kind: 'vmx' | 'qemu';
  /** The .vmx, or vmseal-vm.json. */
  config: string;
  /** Whether the .vmx is encrypted (always false for a qemu folder: its manifest stays in the clear). */
  configEncrypted: boolean;
  /** The .vmsd, when there is one (stays in the clear). */
  snapshotDb?: string;
  disks: VmFolderDisk[];
  stateFiles: VmStateFileEntry[];
}

export interface ListVmFolderOptions {
  /** Opens an encrypted .vmx (its disks are named inside the encryption). */
  keys?: UnlockOptions;
  /** The plain text of an encrypted .vmx, when the caller has already opened it. */
  plainVmx?: Uint8Array;
}

/** Snapshot and suspend state files VMware keeps beside the .vmx. */
const STATE_EXTENSIONS: ReadonlyMap<string, VmStateFileKind> = new Map([
  ['.vmsn', 'vmsn'],
  ['.vmem', 'vmem'],
  ['.vmss', 'vmss'],
]);

/** The chain of a disk (top first) and all its files, or the file alone when it cannot be opened. */
export async function chainOf(path: string, state: VmDiskState): Promise<Pick<VmFolderDisk, 'layers' | 'files'>> {
  if (state === 'missing' || state === 'unreadable') return { layers: [path], files: [path] };
  try {
    const disk = await openVmdk(path, { readOnly: true, allowEncrypted: true });
    try {
      const layers = disk instanceof ChainDisk ? disk.layers().map((l) => l.path) : [disk.path];
      return { layers, files: disk.files() };
    } finally {
      await disk.close();
    }
  } catch {
    // A disk VMware encrypted, or one whose parent is missing: listed by its own file.
    return { layers: [path], files: [path] };
  }
}

async function describeDisk(device: string, fileName: string, path: string): Promise<VmFolderDisk> {
  const s = await diskState(path);
  return { device, fileName, path, ...(await chainOf(path, s.state)), ...s };
}

async function isFile(path: string): Promise<boolean> {
  return stat(path).then(
    (s) => s.isFile(),
    () => false,
  );
}

async function stateEntry(path: string, kind: VmStateFileKind): Promise<VmStateFileEntry> {
  return { path, kind, encrypted: await isStateFile(path) };
}

/** The plain configuration of a .vmx: the file itself, or its decryption. */
async function plainConfig(vmx: string, options: ListVmFolderOptions): Promise<{ file: VmxFile; encrypted: boolean }> {
  const bytes = await readVmxFile(vmx);
  const stored = VmxFile.parse(bytes, vmx);
  if (!isEncryptedVmx(stored)) return { file: stored, encrypted: false };
  if (options.plainVmx !== undefined) return { file: VmxFile.parse(options.plainVmx, vmx), encrypted: true };
  if (options.keys === undefined) {
    throw new VmError('ERR_VMX_ENCRYPTED', `${vmx} is encrypted and names the VM's disks inside the encryption: a key that opens it is needed to list them`, {
      file: vmx,
    });
  }
  return { file: VmxFile.parse((await decryptVmx(bytes, options.keys, vmx)).plain, vmx), encrypted: true };
}

async function listVmxFolder(dir: string, vmx: string, options: ListVmFolderOptions): Promise<VmFolderFiles> {
  const { file, encrypted } = await plainConfig(vmx, options);
  const disks: VmFolderDisk[] = [];
  for (const d of vmxDisks(file, vmx)) disks.push(await describeDisk(d.device, d.fileName, d.path));
  const stateFiles: VmStateFileEntry[] = [];
  const nvramName = file.get('nvram') ?? `${basename(vmx).replace(/\.vmx$/i, '')}.nvram`;
  const nvram = nvramName.startsWith('/') ? nvramName : join(dirname(vmx), nvramName);
  if (await isFile(nvram)) stateFiles.push(await stateEntry(nvram, 'nvram'));
  let snapshotDb: string | undefined;
  for (const name of (await readdir(dir)).sort()) {
    const ext = /\.[^.]+$/.exec(name)?.[0].toLowerCase() ?? '';
    const path = join(dir, name);
    const kind = STATE_EXTENSIONS.get(ext);
    if (kind !== undefined && (await isFile(path))) stateFiles.push(await stateEntry(path, kind));
    if (ext === '.vmsd' && (await isFile(path))) snapshotDb = path;
  }
  return { dir, kind: 'vmx', config: vmx, configEncrypted: encrypted, ...(snapshotDb !== undefined ? { snapshotDb } : {}), disks, stateFiles };
}

async function listQemuFolder(dir: string): Promise<VmFolderFiles> {
  const manifest = await readManifest(dir);
  const disks: VmFolderDisk[] = [];
  for (const [i, d] of manifest.disks.entries()) disks.push(await describeDisk(`disks[${i}]`, d.file, resolveInFolder(dir, d.file)));
  const stateFiles: VmStateFileEntry[] = [];
  if (manifest.uefiVars !== undefined) {
    const path = resolveInFolder(dir, manifest.uefiVars.file);
    if (await isFile(path)) stateFiles.push(await stateEntry(path, 'uefi-vars'));
  }
  return { dir, kind: 'qemu', config: manifestPath(dir), configEncrypted: false, disks, stateFiles };
}

/**
 * List a VM folder's files (see the file comment): `dirOrFile` is the folder, or its .vmx. A folder
 * with exactly one .vmx is a VMware VM; a folder with no .vmx but a vmseal-vm.json is a qemu VM.
 * An encrypted .vmx needs `keys` (or `plainVmx`), else ERR_VMX_ENCRYPTED.
 */
export async function listVmFolder(dirOrFile: string, options: ListVmFolderOptions = {}): Promise<VmFolderFiles> {
  if (await isQemuVmFolder(dirOrFile)) return listQemuFolder(dirOrFile);
  const vmx = await findVmx(dirOrFile);
  return listVmxFolder(dirname(vmx), vmx, options);
}

/** Whether `dir` is a qemu VM folder: a folder with no .vmx and a vmseal-vm.json. */
export async function isQemuVmFolder(dir: string): Promise<boolean> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return false;
  const names = await readdir(dir);
  return !names.some((n) => /\.vmx$/i.test(n)) && names.includes(MANIFEST_NAME);
}

/**
 * What `vmseal vm info` reports for a qemu VM folder: its disks' states (the manifest stays in the
 * clear, so `configEncrypted` is false and `vmx` is the manifest's path) and an interrupted job.
 */
export async function inspectQemuVm(dir: string): Promise<VmInfo> {
  const files = await listQemuFolder(dir);
  const disks = files.disks.map(({ device, fileName, path, state, detail }) => ({
    device,
    fileName,
    path,
    state,
    ...(detail !== undefined ? { detail } : {}),
  }));
  const pending = await readVmJob(dir);
  return {
    vmx: files.config,
    configEncrypted: false,
    lockers: [],
    disks,
    encryptedDisks: disks.filter((d) => d.state === 'vmseal' || d.state === 'vmware').length,
    mixed: isMixed(disks),
    holdsDiskKey: false,
    ...(pending
      ? { job: { operation: pending.operation, started: pending.started, stepsDone: pending.steps.filter((s) => s.done).length, steps: pending.steps.length } }
      : {}),
  };
}
