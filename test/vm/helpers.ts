// Shared fixtures of the VM tests.
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { openDisk } from '../../src/vmdk/index.js';

/** A descriptor as VMware writes an encrypted disk's: its KeySafe and encrypted data, no encryption.format. */
export const VMWARE_ENCRYPTED_DESCRIPTOR = [
  '# Disk DescriptorFile',
  'version=1',
  'encoding="UTF-8"',
  'CID=fffffffe',
  'parentCID=ffffffff',
  'createType="monolithicSparse"',
  'encryption.keySafe = "vmware:key/list/(pair/(null/%3cVMWARE%2dEMPTYSTRING%3e,HMAC%2dSHA%2d1,' + 'A'.repeat(92) + '))"',
  'encryption.data = "' + 'B'.repeat(128) + '"',
  '',
].join('\n');

/** SHA-256 of bytes, hex. */
export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** SHA-256 of a plain VMDK's virtual disk (the whole capacity, read through vmseal's VMDK layer). */
export async function contentHash(path: string): Promise<string> {
  const d = await openDisk(path, { readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

/**
 * A 1 MiB raw image at `path`: `dataBytes` random bytes, then zeros. The VM tests convert it with
 * qemu-img into the disks of their VM folders.
 */
export function randomRaw(path: string, dataBytes: number): string {
  writeFileSync(path, Buffer.concat([randomBytes(dataBytes), Buffer.alloc(1_048_576 - dataBytes)]));
  return path;
}
