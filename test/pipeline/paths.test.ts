// Disks given through symbolic links are worked on where they really are; ambiguous extents and
// dangling output links are refused.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, readFileSync, symlinkSync, writeFileSync, copyFileSync, truncateSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { encryptDisk, encryptInPlace } from '../../src/pipeline/index.js';
import { realDiskPath } from '../../src/pipeline/paths.js';
import { patternBytes, phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { plainHash } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
let image: Buffer;
beforeAll(() => {
  tmp = tempDir('vmseal-paths-');
  image = patternBytes(1 << 20, 61);
  writeFileSync(join(tmp.dir, 'plain.raw'), image);
});
afterAll(() => tmp.cleanup());

function flatDisk(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const d = join(dir, 'd.vmdk');
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', join(tmp.dir, 'plain.raw'), d]);
  return d;
}

describe('in-place jobs through a symbolic link', () => {
  it('encrypt the real descriptor and leave the link a link', async () => {
    const real = flatDisk(join(tmp.dir, 'same'));
    const link = join(tmp.dir, 'same', 'link.vmdk');
    symlinkSync('d.vmdk', link);
    await encryptInPlace(link, { lockers: [phraseLocker('pw')], chunkSize: 1 << 20 });
    expect(lstatSync(link).isSymbolicLink(), 'the link is still a link').toBe(true);
    expect(readFileSync(real, 'utf8')).toContain('encryption.keySafe');
    expect(await plainHash(real, 'pw')).toBe(sha256(image));
    expect(await plainHash(link, 'pw')).toBe(sha256(image));
  });

  it('refuse a link whose extent names a different file beside the link than beside the descriptor', async () => {
    const real = flatDisk(join(tmp.dir, 'real'));
    const other = join(tmp.dir, 'other');
    mkdirSync(other);
    const link = join(other, 'd.vmdk');
    symlinkSync(real, link);
    copyFileSync(join(tmp.dir, 'real', 'd-flat.vmdk'), join(other, 'd-flat.vmdk')); // a second, different file under the extent's name
    const before = readFileSync(real);
    await expect(encryptInPlace(link, { lockers: [phraseLocker('pw')] })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: expect.stringMatching(/two different files/),
    });
    expect(readFileSync(real).equals(before)).toBe(true);
  });
});

describe('resolving a link to a large image', () => {
  it('reads only the head of the real file, not the whole image', async () => {
    // A link in another folder makes realDiskPath look for a text descriptor behind it. A 1 GiB
    // (sparse) image read whole would take its size in memory: the process's peak RSS tells.
    const dir = join(tmp.dir, 'big');
    mkdirSync(join(dir, 'links'), { recursive: true });
    const big = join(dir, 'big.raw');
    writeFileSync(big, '');
    truncateSync(big, 2 ** 30);
    symlinkSync(big, join(dir, 'links', 'big.raw'));
    const before = process.resourceUsage().maxRSS; // KiB
    try {
      expect(await realDiskPath(join(dir, 'links', 'big.raw'))).toBe(big);
      const grownMiB = (process.resourceUsage().maxRSS - before) / 1024;
      expect(grownMiB, 'peak memory growth while resolving the link (MiB)').toBeLessThan(256);
    } finally {
      rmSync(big);
    }
  });
});

describe('outputs', () => {
  it('a dangling symbolic link as output is refused and nothing is written through it', async () => {
    const dir = join(tmp.dir, 'dangling');
    mkdirSync(dir);
    const target = join(dir, 'elsewhere', 'planted.vmdk');
    const out = join(dir, 'out.vmdk');
    symlinkSync(target, out);
    await expect(encryptDisk(join(tmp.dir, 'plain.raw'), out, { lockers: [phraseLocker('pw')], subformat: 'monolithicSparse' })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
      message: expect.stringMatching(/dangling link/),
    });
    expect(existsSync(target)).toBe(false);
    expect(lstatSync(out).isSymbolicLink()).toBe(true);
  });
});
