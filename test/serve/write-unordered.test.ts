// EncryptedDisk.writeUnordered, the write path of `vmseal serve`: the caller's buffer is encrypted in
// place (no copy), aligned writes to a flat disk run concurrently outside the write queue, and what
// must stay ordered (partial units, unit 0 and its data check) still goes through the queue.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDisk, type EncryptedDisk } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, random } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-write-unordered-');
});
afterAll(() => tmp?.cleanup());

async function open(path: string, readOnly = false): Promise<EncryptedDisk> {
  const d = await openDisk(path, { keys: KEYS, readOnly });
  if (!d.encrypted) throw new Error('expected an encrypted disk');
  return d;
}

describe('writeUnordered', () => {
  it('encrypts an aligned buffer in place, leaves a partial one alone, and reads back the plaintext', async () => {
    const path = await encryptedDisk(tmp.dir, 'a', { subformat: 'monolithicFlat', capacity: 4 * MiB, unitSize: 512 });
    const d = await open(path);
    try {
      const plain = random(8192);
      const buf = Buffer.from(plain);
      await d.writeUnordered(4096, buf);
      expect(buf.equals(plain)).toBe(false); // ciphertext now: given up by the caller, no copy made
      const partial = random(700);
      const pbuf = Buffer.from(partial);
      await d.writeUnordered(4096 + 100, pbuf); // read-modify-write: through the queue, into a new buffer
      expect(pbuf.equals(partial)).toBe(true);
      const expected = Buffer.from(plain);
      partial.copy(expected, 100);
      expect((await d.read(4096, 8192)).equals(expected)).toBe(true);
    } finally {
      await d.close();
    }
  });

  it('runs many disjoint aligned writes at once; flush and close wait for them', async () => {
    const path = await encryptedDisk(tmp.dir, 'b', { subformat: 'monolithicFlat', capacity: 4 * MiB, unitSize: 4096 });
    const d = await open(path);
    const pieces = Array.from({ length: 64 }, () => random(4096));
    // Not awaited one by one: close() must not finish before every one of them is in the file.
    const writes = pieces.map((p, i) => d.writeUnordered((i + 1) * 8192, Buffer.from(p)));
    await d.close();
    await Promise.all(writes);
    const again = await open(path, true);
    try {
      for (let i = 0; i < pieces.length; i++) expect((await again.read((i + 1) * 8192, 4096)).equals(pieces[i])).toBe(true);
    } finally {
      await again.close();
    }
  });

  it('keeps unit 0 and its data check in order: the disk opens again with the new unit 0', async () => {
    const path = await encryptedDisk(tmp.dir, 'c', { subformat: 'monolithicFlat', capacity: MiB, unitSize: 512 });
    const d = await open(path);
    const unit0 = random(512);
    await d.writeUnordered(0, Buffer.from(unit0));
    await d.close();
    const again = await open(path, true); // the data check matches unit 0, or this would fail
    try {
      expect((await again.read(0, 512)).equals(unit0)).toBe(true);
    } finally {
      await again.close();
    }
  });
});
