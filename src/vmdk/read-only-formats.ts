import { VmdkFormatError } from './errors.js';

/**
 * Subformats vmseal reads but never writes: the ESX delta disks vSphere makes for snapshots
 * (`vmfsSparse`: "COWD" extents, disks up to 2 TiB; `seSparse`: larger disks and the default since
 * vSphere 6.5). vmseal reads them as plain disks or as layers of a chain and copies them out
 * (convert, decrypt, verify, backup); it opens them only read-only and takes no snapshot on them.
 */
export const READ_ONLY_SUBFORMATS = ['vmfsSparse', 'seSparse'] as const;

export function isReadOnlySubformat(subformat: string): boolean {
  return (READ_ONLY_SUBFORMATS as readonly string[]).includes(subformat);
}

/** The refusal of a write to (or a snapshot on) such a disk: says how to get a writable copy. */
export function readOnlySubformatError(subformat: string, file: string): VmdkFormatError {
  return new VmdkFormatError(
    'ERR_VMDK_READ_ONLY',
    `vmseal reads ${subformat.slice(0, 40)} disks but does not write them or take snapshots on them; convert the disk to monolithicSparse first (vmseal convert <disk> <new.vmdk>) and use the copy`,
    { file },
  );
}
