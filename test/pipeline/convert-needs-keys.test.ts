// convertNeedsKeys(input, options) is the copy job's own rule: for every shape of convert, a job
// given no keys succeeds exactly when it says no keys are needed (a ciphertext copy), and is refused
// with ERR_DISK_ENCRYPTED, before writing anything, when it says they are.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertDisk, convertNeedsKeys, encryptDisk } from '../../src/pipeline/index.js';
import { phraseLocker } from '../disk/helpers.js';

const MiB = 1024 * 1024;

let dir: string;
let raw: string;
const enc: Record<string, string> = {};

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-needs-keys-'));
  raw = join(dir, 'src.raw');
  const data = Buffer.alloc(4 * MiB);
  data.fill(7, 0, 100_000);
  data.fill(9, 2 * MiB, 2 * MiB + 300_000);
  writeFileSync(raw, data);
  for (const [name, subformat, grainSize] of [
    ['flat', 'monolithicFlat', undefined],
    ['sparse', 'monolithicSparse', undefined],
    ['sparse4k', 'monolithicSparse', 4096],
  ] as const) {
    enc[name] = join(dir, `enc-${name}.vmdk`);
    await encryptDisk(raw, enc[name], { subformat, lockers: [phraseLocker('pw')], ...(grainSize ? { grainSize } : {}) });
  }
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('convertNeedsKeys', () => {
  it.each([
    ['flat', 'monolithicFlat', undefined, false],
    ['flat', 'twoGbMaxExtentFlat', undefined, false],
    ['sparse', 'monolithicSparse', undefined, false],
    ['sparse', 'monolithicSparse', 16384, false],
    ['sparse4k', 'monolithicSparse', undefined, false],
    ['sparse4k', 'monolithicSparse', 65536, true],
    ['sparse', 'monolithicFlat', undefined, true],
    ['sparse', 'twoGbMaxExtentFlat', undefined, true],
  ] as const)('%s → %s (grain %s): needs keys %s, and a job without keys agrees', async (input, subformat, grainSize, needs) => {
    const options = { subformat, ...(grainSize ? { grainSize } : {}) };
    expect(await convertNeedsKeys(enc[input]!, options)).toBe(needs);
    const out = join(dir, `out-${input}-${subformat}-${grainSize ?? 'default'}.vmdk`);
    const job = convertDisk(enc[input]!, out, options);
    if (needs) {
      await expect(job).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
      expect(existsSync(out)).toBe(false);
    } else {
      expect(await job).toMatchObject({ encrypted: true });
    }
  });

  it('flat → sparse: true (keys leave the zero units out), though a job without keys still copies the ciphertext', async () => {
    expect(await convertNeedsKeys(enc.flat!, { subformat: 'monolithicSparse' })).toBe(true);
    const out = join(dir, 'out-flat-monolithicSparse-nokeys.vmdk');
    const result = await convertDisk(enc.flat!, out, { subformat: 'monolithicSparse' });
    expect(result).toMatchObject({ encrypted: true });
    expect((result.notes ?? []).some((n) => n.includes('every data unit is an allocated grain'))).toBe(true);
  });

  it('is false for a plain input, true to decrypt or re-encrypt an encrypted one', async () => {
    expect(await convertNeedsKeys(raw, { subformat: 'monolithicSparse' })).toBe(false);
    expect(await convertNeedsKeys(enc.flat!, { decrypt: true })).toBe(true);
    expect(await convertNeedsKeys(enc.sparse!, { encrypt: { lockers: [phraseLocker('new')] } })).toBe(true);
  });

  it("reports the job's own error for an input that is no disk", async () => {
    const junk = join(dir, 'junk.vmdk');
    writeFileSync(junk, 'not a descriptor\n');
    await expect(convertNeedsKeys(junk)).rejects.toHaveProperty('code');
    await expect(convertNeedsKeys(join(dir, 'missing.vmdk'))).rejects.toHaveProperty('code');
  });
});
