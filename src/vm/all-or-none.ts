/**
 * VMware's all-or-none rule for a VM's disks: VMware Cloud Director refuses a VM whose disks are
 * partly encrypted, and so do the vmseal commands that act on a VM as a whole (`vm tpm`), unless
 * told otherwise (`--allow-mixed`). `vm info` reports a mixed VM; `vm encrypt` completes one and
 * `vm decrypt` reverses one. A disk VMware encrypted counts as encrypted; a missing or unreadable
 * disk counts as neither.
 */
import type { VmDiskState } from './config-disks.js';
import { VmError } from './errors.js';

interface StatedDisk {
  device: string;
  state: VmDiskState;
}

/** Whether some disks are encrypted (vmseal or VMware) and some plain. */
export function isMixed(disks: readonly StatedDisk[]): boolean {
  const encrypted = disks.some((d) => d.state === 'vmseal' || d.state === 'vmware');
  return encrypted && disks.some((d) => d.state === 'plain');
}

/** Refuse a mixed VM for `command` with ERR_VM_MIXED, listing the disks in each state. */
export function refuseMixed(disks: readonly StatedDisk[], command: string, where: string): void {
  if (!isMixed(disks)) return;
  const list = (states: VmDiskState[]): string =>
    disks
      .filter((d) => states.includes(d.state))
      .map((d) => d.device)
      .join(', ');
  throw new VmError(
    'ERR_VM_MIXED',
    `${command} refuses the mixed VM ${where}: encrypted disks: ${list(['vmseal', 'vmware'])}; plain disks: ${list(['plain'])} (VMware requires all or none). ` +
      'Encrypt the rest with `vmseal vm encrypt`, decrypt the VM with `vmseal vm decrypt`, or give --allow-mixed',
    { file: where },
  );
}
