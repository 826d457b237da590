// A convert that keeps an encrypted disk's encryption copies its ciphertext as it is, with no key,
// where the output can hold it unchanged (flat → flat, sparse → sparse): the ciphertext view of the
// output (qemu-img's raw conversion, which knows nothing of the encryption) is byte-identical to the
// input's, and the output opens and decrypts to the source. Sparse → flat needs the keys (holes
// become encrypted zeros): refused without them, re-encrypted with them.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertDisk, encryptDisk } from '../../src/pipeline/index.js';
import { openDisk as openVmdk } from '../../src/vmdk/index.js';
import { phraseLocker, sha256 } from '../disk/helpers.js';
import { plainHash } from './helpers.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let dir: string;
let plain: Buffer;
let sparse: string;
let flat: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-cipher-convert-'));
  // Data with holes: unit 0, a run in the middle, the last MiB; zeros elsewhere.
  plain = Buffer.alloc(SIZE);
  for (const [at, len] of [
    [0, 300 * 1024],
    [3 * MiB + 4096, MiB],
    [SIZE - MiB, MiB],
  ])
    for (let i = 0; i < len; i++) plain[at + i] = (i * 7 + at) & 0xff || 1;
  writeFileSync(join(dir, 'src.raw'), plain);
  sparse = join(dir, 'enc-sparse.vmdk');
  flat = join(dir, 'enc-flat.vmdk');
  await encryptDisk(join(dir, 'src.raw'), sparse, { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
  await encryptDisk(join(dir, 'src.raw'), flat, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The stored bytes of a VMDK as qemu-img reads them (it ignores the encryption lines): the ciphertext view. */
function ciphertextView(path: string): Buffer {
  const raw = `${path}.cipher.raw`;
  execFileSync('qemu-img', ['convert', '-q', '-f', 'vmdk', '-O', 'raw', path, raw]);
  const b = readFileSync(raw);
  rmSync(raw);
  return b;
}

/** The encryption lines of a disk's descriptor. */
async function encryptionLines(path: string): Promise<string[]> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true });
  try {
    return [...d.descriptor!.entries()].filter(([k]) => k.startsWith('encryption.')).map(([k, v]) => `${k}=${v}`);
  } finally {
    await d.close();
  }
}

/** The data-backed ranges of a disk's stored view. */
async function allocated(path: string): Promise<Array<{ offset: number; length: number }>> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true });
  try {
    const out = [];
    for await (const r of d.allocatedRanges()) out.push(r);
    return out;
  } finally {
    await d.close();
  }
}

describe('convert of an encrypted disk keeping its encryption', () => {
  it.each([
    ['sparse', 'monolithicSparse'],
    ['sparse', 'twoGbMaxExtentSparse'],
    ['flat', 'monolithicFlat'],
    ['flat', 'twoGbMaxExtentFlat'],
  ] as const)('%s → %s copies the ciphertext as it is, with no key', async (kind, subformat) => {
    const input = kind === 'sparse' ? sparse : flat;
    const out = join(dir, `copy-${kind}-${subformat}.vmdk`);
    const r = await convertDisk(input, out, { subformat });
    expect(r.encrypted).toBe(true);
    expect(ciphertextView(out).equals(ciphertextView(input))).toBe(true);
    // Same DEK, disk id, authenticator, KeySafe and data check: the lines are the input's.
    expect(await encryptionLines(out)).toEqual(await encryptionLines(input));
    if (kind === 'sparse') expect(await allocated(out)).toEqual(await allocated(input));
    expect(await plainHash(out, 'pw')).toBe(sha256(plain));
  });

  it('flat → sparse without keys: every unit becomes data (which are zeros is not known without the key)', async () => {
    const out = join(dir, 'flat-to-sparse.vmdk');
    await convertDisk(flat, out, { subformat: 'monolithicSparse' });
    expect(ciphertextView(out).equals(ciphertextView(flat))).toBe(true);
    expect(await allocated(out)).toEqual([{ offset: 0, length: SIZE }]);
    expect(await plainHash(out, 'pw')).toBe(sha256(plain));
  });

  it('flat → sparse with keys: re-encrypted, the zero units left out', async () => {
    const out = join(dir, 'flat-to-sparse-keys.vmdk');
    await convertDisk(flat, out, { subformat: 'monolithicSparse', keys: { passphrase: 'pw' } });
    const ranges = await allocated(out);
    expect(ranges.reduce((n, r) => n + r.length, 0)).toBeLessThan(SIZE / 2);
    expect(await plainHash(out, 'pw')).toBe(sha256(plain));
  });

  it('sparse → flat needs the keys: refused without them, re-encrypted with them', async () => {
    const out = join(dir, 'sparse-to-flat.vmdk');
    await expect(convertDisk(sparse, out, { subformat: 'monolithicFlat' })).rejects.toMatchObject({
      code: 'ERR_DISK_ENCRYPTED',
      message: expect.stringMatching(/holes become encrypted zeros in a flat output/),
    });
    await expect(convertDisk(sparse, out, { subformat: 'monolithicFlat', keys: { passphrase: 'wrong' } })).rejects.toMatchObject({
      code: expect.stringMatching(/^ERR_/),
    });
    await convertDisk(sparse, out, { subformat: 'monolithicFlat', keys: { passphrase: 'pw' } });
    expect(await plainHash(out, 'pw')).toBe(sha256(plain));
  });

  it('keys given to a ciphertext copy are not used: a wrong passphrase does not stop it', async () => {
    const out = join(dir, 'wrong-key-copy.vmdk');
    await convertDisk(sparse, out, { subformat: 'monolithicSparse', keys: { passphrase: 'wrong' } });
    expect(ciphertextView(out).equals(ciphertextView(sparse))).toBe(true);
    expect(await plainHash(out, 'pw')).toBe(sha256(plain));
  });
});
