// `vmseal serve` of the top of a snapshot chain: reads fall through to the parents, writes land in
// the top only, block status is the union of the layers, and the parents stay as they were.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedSnapshot } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, plaintextOf, random, run, startHost, unixUri } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-chain-');
});
afterAll(() => tmp?.cleanup());

describe('serving a snapshot chain', () => {
  it('serves the top of an encrypted chain: qemu-io reads the parent through it and writes only the top', async () => {
    const dir = tmp.dir;
    const content = random(MiB);
    const base = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: 4 * MiB, content, at: MiB });
    const baseBefore = await plaintextOf(base);
    const top = await createEncryptedSnapshot(base, { keys: KEYS });
    const { host, socket } = await startHost(dir, [{ path: top, name: 'vm' }]);
    try {
      const uri = unixUri(socket, 'vm');
      // The parent's data through the served top, then a write over part of it.
      const raw = join(dir, 'read.raw');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri, raw]);
      expect(readFileSync(raw).equals(baseBefore)).toBe(true);
      await run('qemu-io', ['-f', 'raw', '-c', `write -P 0x5e ${MiB + 4096} 8192`, uri]);
      // Block status: the parent's allocation shows through the top.
      const map = JSON.parse(await run('nbdinfo', ['--map', '--json', uri])) as Array<{ offset: number; length: number; type: number }>;
      const data = map.filter((e) => (e.type & 1) === 0);
      expect(data.some((e) => e.offset <= MiB && e.offset + e.length >= 2 * MiB)).toBe(true);
    } finally {
      await host.close();
    }
    const expected = Buffer.from(baseBefore);
    expected.fill(0x5e, MiB + 4096, MiB + 4096 + 8192);
    expect((await plaintextOf(top)).equals(expected)).toBe(true);
    expect((await plaintextOf(base)).equals(baseBefore)).toBe(true);
  });
});
