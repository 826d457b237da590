/**
 * The all-or-none rule for disks named one by one (`vmseal serve DISK…`): a disk whose folder is a VM
 * folder — a vmseal-vm.json (a qemu VM) or exactly one .vmx — that names it (as a disk, or as a layer
 * of a disk's snapshot chain) belongs to that VM, and a mixed VM's disks are refused as `serve --vm`
 * refuses them (all-or-none.ts). A disk in no VM folder, or one its folder's VM does not name, is
 * served as any disk.
 */
import { readdir } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { UnlockOptions } from '../keys/index.js';
import { refuseMixed } from './all-or-none.js';
import { listVmFolder, type VmFolderFiles } from './folder-files.js';
import { MANIFEST_NAME } from './manifest.js';

export interface DisksVmCheck {
  /** The command named in the refusal, e.g. "vmseal serve". */
  command: string;
  /** Opens an encrypted .vmx (its disks are named inside the encryption). */
  keys?: UnlockOptions;
  /**
   * Told when a VM's disks cannot be listed (an encrypted .vmx no key given opens, a damaged
   * manifest): that VM is not checked — the disks are still what the user named.
   */
  unchecked?: (dir: string, why: string) => void;
}

/** The folder's VM (its files), or undefined when the folder is not a VM folder. */
async function vmOfFolder(dir: string, options: DisksVmCheck): Promise<VmFolderFiles | undefined> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const vmx = names.filter((n) => /\.vmx$/i.test(n)).length;
  // Several .vmx: no one VM (listVmFolder would ask which); none and no manifest: not a VM folder.
  if (vmx > 1 || (vmx === 0 && !names.includes(MANIFEST_NAME))) return undefined;
  try {
    return await listVmFolder(dir, options.keys ? { keys: options.keys } : {});
  } catch (err) {
    // A typed error (the disks named inside an encrypted .vmx no key opens, a damaged manifest or
    // .vmx): the rule cannot be checked. Anything else is a fault and goes up.
    if (!(err instanceof Error && typeof (err as { code?: unknown }).code === 'string')) throw err;
    options.unchecked?.(dir, err.message);
    return undefined;
  }
}

/** Refuse (ERR_VM_MIXED, listing the disks in each state) any of `disks` that is a disk of a mixed VM. */
export async function refuseMixedVmDisks(disks: readonly string[], options: DisksVmCheck): Promise<void> {
  const byFolder = new Map<string, string[]>();
  for (const d of disks) {
    const abs = resolve(d);
    byFolder.set(dirname(abs), [...(byFolder.get(dirname(abs)) ?? []), abs]);
  }
  for (const [dir, served] of byFolder) {
    const vm = await vmOfFolder(dir, options);
    if (!vm) continue;
    const named = vm.disks.some((d) => d.layers.concat(d.path).some((l) => served.includes(resolve(l))));
    // Named as `serve --vm` names a qemu VM's disks (vars-export.ts): the manifest index and the file.
    const stated = vm.disks.map((d) => ({ state: d.state, device: vm.kind === 'qemu' ? `${d.device} (${d.fileName})` : d.device }));
    if (named) refuseMixed(stated, options.command, vm.dir);
  }
}
