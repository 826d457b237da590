// The served state-file image is write-back: a write changes the memory only, a flush makes it
// durable (one rewrite for any number of writes), and close() writes what no flush took. OVMF
// programs its flash a byte at a time; a rewrite per write made a UEFI boot take minutes
// (test/vm/uefi-boot.test.ts boots one).
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decryptStateFile, encryptStateFile } from '../../src/vm/index.js';
import { openStateFileImage } from '../../src/vm/state-file-image.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';

const PASSPHRASE = 'state-image-test-passphrase';
const KEYS = { passphrase: PASSPHRASE };
let tmp: ReturnType<typeof tempDir>;
let n = 0;

beforeAll(() => {
  tmp = tempDir('vmseal-state-image-');
});
afterAll(() => tmp.cleanup());

async function stateFile(plain: Buffer): Promise<string> {
  const src = join(tmp.dir, `plain${n}`);
  const path = join(tmp.dir, `vars${n++}.fd`);
  writeFileSync(src, plain);
  await encryptStateFile(src, path, { lockers: [phraseLocker(PASSPHRASE)] });
  return path;
}

async function decrypted(path: string): Promise<Buffer> {
  const out = join(tmp.dir, `dec${n++}`);
  await decryptStateFile(path, out, { keys: KEYS });
  return readFileSync(out);
}

describe('a state file opened as an image', () => {
  it('keeps byte-sized writes in memory until a flush, which writes them all in one rewrite', async () => {
    const plain = randomBytes(65_536);
    const path = await stateFile(plain);
    const atRest = readFileSync(path);
    const image = await openStateFileImage(path, { keys: KEYS });
    try {
      const next = Buffer.from(plain);
      for (let i = 0; i < 2000; i++) {
        next[i * 7] = i & 0xff;
        await image.write(i * 7, next.subarray(i * 7, i * 7 + 1));
      }
      // Answered from memory: reads see the writes, the file is not rewritten yet.
      const back = Buffer.alloc(next.length);
      await image.read(0, back);
      expect(back.equals(next)).toBe(true);
      expect(readFileSync(path).equals(atRest)).toBe(true);
      await image.flush();
      expect(readFileSync(path).equals(atRest)).toBe(false);
      expect((await decrypted(path)).equals(next)).toBe(true);
    } finally {
      await image.close();
    }
  });

  it('close() writes what no flush took', async () => {
    const plain = randomBytes(4096);
    const path = await stateFile(plain);
    const image = await openStateFileImage(path, { keys: KEYS });
    await image.write(100, Buffer.from('written before close'));
    await image.close();
    const expected = Buffer.from(plain);
    expected.write('written before close', 100, 'latin1');
    expect((await decrypted(path)).equals(expected)).toBe(true);
  });
});
