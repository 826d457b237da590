// Snapshot chains for the commit crash tests (SIGKILL and simulated power loss): a plain chain
// written by qemu-io on a vmseal snapshot, and an encrypted chain written through vmseal.
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { createEncryptedDisk, createEncryptedSnapshot, openDisk } from '../../src/disk/index.js';
import { createSnapshot } from '../../src/vmdk/index.js';
import { patternBytes, phraseLocker } from '../disk/helpers.js';

const MiB = 1 << 20;

export interface Scenario {
  name: string;
  passphrase: string | undefined;
  /** Make the chain in `dir`; returns [parent, top]. */
  make(dir: string): Promise<[string, string]>;
}

export const scenarios: Scenario[] = [
  {
    name: 'plain chain (qemu-io writes, vmseal snapshot)',
    passphrase: undefined,
    async make(dir) {
      const base = join(dir, 'vm.vmdk');
      execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', base, '8M']);
      execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x12 6M 1M', base]);
      const top = await createSnapshot(base);
      execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x21 1536 3072', '-c', 'write -P 0x22 2M 2M', '-c', 'write -P 0x23 7M 64k', top]);
      return [base, top];
    },
  },
  {
    name: 'encrypted chain',
    passphrase: 'pw',
    async make(dir) {
      const base = join(dir, 'vm.vmdk');
      const d = await createEncryptedDisk(base, { capacity: 8 * MiB, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
      await d.write(0, patternBytes(3 * MiB, 1));
      await d.close();
      const top = await createEncryptedSnapshot(base, { keys: { passphrase: 'pw' } });
      const c = await openDisk(top, { keys: { passphrase: 'pw' } });
      await c.write(100, patternBytes(5000, 2)); // unit 0 too
      await c.write(2 * MiB, patternBytes(2 * MiB, 3));
      await c.close();
      return [base, top];
    },
  },
];
