// Helpers of the pipeline's crash and journal tests: hash what a disk decrypts to.
import { openDisk } from '../../src/disk/index.js';
import { sha256 } from '../disk/helpers.js';

/** SHA-256 of the plaintext of the encrypted disk at `disk`, opened read-only with `passphrase`. */
export async function plainHash(disk: string, passphrase: string): Promise<string> {
  const d = await openDisk(disk, { keys: { passphrase }, readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}
