/**
 * The all-or-none rule of an encrypted VM (vSphere refuses a VM whose disks are partly encrypted):
 * the commands that act on a whole VM — `vm rekey`, serving a VM folder — refuse a mixed VM, naming
 * the disks in each state, unless the user says `--allow-mixed`. `vm encrypt` completes a mixed VM
 * and `vm decrypt` reverses it, so they do not call this.
 */
import type { VmDiskState } from './config-disks.js';
import { VmError } from './errors.js';

export interface DiskWithState {
  path: string;
  state: VmDiskState;
}

/** Disks that count as encrypted for the rule: vmseal's and VMware's own. */
export function isEncryptedState(state: VmDiskState): boolean {
  return state === 'vmseal' || state === 'vmware';
}

/** Throw ERR_VM_MIXED when some of `disks` are encrypted and some plain; `operation` names what is refused. */
export function refuseMixedVm(vm: string, disks: readonly DiskWithState[], operation: string): void {
  const encrypted = disks.filter((d) => isEncryptedState(d.state)).map((d) => d.path);
  const plain = disks.filter((d) => d.state === 'plain').map((d) => d.path);
  if (encrypted.length === 0 || plain.length === 0) return;
  throw new VmError(
    'ERR_VM_MIXED',
    `the VM ${vm} is mixed (encrypted disks: ${encrypted.join(', ')}; plain disks: ${plain.join(', ')}): refusing to ${operation} it unless allowed (--allow-mixed)`,
    { file: vm },
  );
}
