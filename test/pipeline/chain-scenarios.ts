// Snapshot chains for the commit crash tests (SIGKILL and simulated power loss): a plain chain
// written by qemu-io on a vmseal snapshot, and an encrypted chain written through vmseal.
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { LocalKeyProvider } from '../../src/keys/index.js';
import { runChainJob } from '../../src/vm/chain-aside.js';
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

/**
 * base ← vm-000001 ← vm-000002 made by qemu-img create -b, written by qemu-io in every layer (the
 * middle one also zeroes a range of the base's data: those grains must keep hiding it), then
 * encrypted by vmseal as one chain under passphrase `phrase`. Returns the layers, base first.
 */
export async function qemuChain(
  dir: string,
  lockers: Parameters<typeof runChainJob>[1]['lockers'],
  keys: { passphrase?: string; providers?: LocalKeyProvider[] },
): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const names = ['vm.vmdk', 'vm-000001.vmdk', 'vm-000002.vmdk'];
  const [base, mid, top] = names.map((n) => join(dir, n)) as [string, string, string];
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', base, '8M']);
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 3M', '-c', 'write -P 0x12 6M 1M', base]);
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', names[0]!, '-F', 'vmdk', names[1]!], { cwd: dir });
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x21 1536 3072', '-c', 'write -z 6M 128k', '-c', 'write -P 0x22 2M 2M', mid]);
  execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', names[1]!, '-F', 'vmdk', names[2]!], { cwd: dir });
  execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x31 1M 64k', '-c', 'write -P 0x32 7M 512k', top]);
  chmodSync(base, 0o444);
  chmodSync(mid, 0o444);
  await runChainJob([top, mid, base], { operation: 'encrypt', lockers: lockers!, keys });
  return [base, mid, top];
}
