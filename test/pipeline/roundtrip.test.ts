import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { encryptDisk, decryptDisk, convertDisk } from '../../src/pipeline/index.js';
import { openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { createDisk } from '../../src/vmdk/index.js';
import { unlockKeySafe } from '../../src/keys/index.js';
import { MemoryKeyProvider, patternBytes, phraseLocker, providerLocker, sha256, tempDir, xtsReference } from '../disk/helpers.js';

const MiB = 1 << 20;
const CAPACITY = 6 * MiB;
let tmp: ReturnType<typeof tempDir>;
let plainRaw: string;
let plainImage: Buffer;

/** A disk image with data in some places and holes elsewhere (an all-zero grain in the middle too). */
function makeImage(): Buffer {
  const img = Buffer.alloc(CAPACITY);
  patternBytes(300_000, 1).copy(img, 0);
  patternBytes(5000, 2).copy(img, 2 * MiB + 777);
  patternBytes(MiB, 3).copy(img, 4 * MiB);
  img.fill(0, 4 * MiB + 65536, 4 * MiB + 131072); // zeros inside a data region
  patternBytes(512, 4).copy(img, CAPACITY - 512);
  return img;
}

function qemuImg(args: string[]): string {
  return execFileSync('qemu-img', args, { encoding: 'utf8' });
}

beforeAll(() => {
  tmp = tempDir('vmseal-pipe-');
  plainImage = makeImage();
  plainRaw = join(tmp.dir, 'plain.raw');
  writeFileSync(plainRaw, plainImage);
});
afterAll(() => tmp.cleanup());

const SUBFORMATS = ['monolithicFlat', 'twoGbMaxExtentFlat', 'vmfs', 'monolithicSparse', 'twoGbMaxExtentSparse'] as const;

describe('encrypt → decrypt round trips', () => {
  for (const subformat of SUBFORMATS) {
    for (const cipher of ['aes-256-xts', 'aes-128-xts'] as const) {
      for (const unitSize of [512, 4096] as const) {
        it(`${subformat} ${cipher} ${unitSize}`, async () => {
          const dir = join(tmp.dir, `rt-${subformat}-${cipher}-${unitSize}`);
          execFileSync('mkdir', ['-p', dir]);
          // The plain source in the same subformat, made by qemu-img (an independent writer; it cannot write vmfs).
          const src = join(dir, 'src.vmdk');
          if (subformat === 'vmfs') await convertDisk(plainRaw, src, { subformat });
          else qemuImg(['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${subformat}`, plainRaw, src]);
          const enc = join(dir, 'enc.vmdk');
          const r = await encryptDisk(src, enc, { cipher, unitSize, lockers: [phraseLocker('pw')] });
          expect(r).toMatchObject({ operation: 'encrypt', subformat, virtualSize: CAPACITY, encrypted: true });
          // qemu-img sees a valid VMDK of the same size (holding ciphertext).
          const info = JSON.parse(qemuImg(['info', '--output=json', enc]));
          expect(info.format).toBe('vmdk');
          expect(info['virtual-size']).toBe(CAPACITY);
          if (subformat.includes('Sparse')) qemuImg(['check', '-q', enc]); // throws on a non-zero exit
          // libvmdk's vmdkinfo too, where it is installed.
          const vmdkinfo = spawnSync('vmdkinfo', [enc], { encoding: 'utf8' });
          if (vmdkinfo.status !== null && !vmdkinfo.error) expect(vmdkinfo.stdout).toContain(`(${CAPACITY} bytes)`);
          // Nothing but the output's files and no temporary leftovers.
          expect(readdirSync(dir).filter((f) => f.includes('vmseal-tmp') || f.endsWith('.lck'))).toEqual([]);
          const params = await readEncryptionParams(enc);
          expect(params).toMatchObject({ cipher, unitSize, formatVersion: 2, dataCheck: expect.stringMatching(/^[0-9a-f]{64}\.-{64}$/) });
          const out = join(dir, 'dec.raw');
          await decryptDisk(enc, out, { keys: { passphrase: 'pw' }, subformat: 'raw' });
          expect(sha256(readFileSync(out))).toBe(sha256(plainImage));
          // The ciphertext qemu-img reads is XTS of the plaintext, unit by unit (holes of sparse disks stay zeros).
          const ct = join(dir, 'ct.raw');
          qemuImg(['convert', '-q', '-f', 'vmdk', '-O', 'raw', enc, ct]);
          const key = (await unlockKeySafe(params!.keySafe, { passphrase: 'pw' })).key;
          const ctBytes = readFileSync(ct);
          const sparse = subformat.includes('Sparse');
          for (const [off, len] of [
            [0, 65536],
            [4 * MiB, 65536],
            [CAPACITY - 65536, 65536],
          ]) {
            expect(ctBytes.subarray(off, off + len).equals(xtsReference(true, key, plainImage.subarray(off, off + len), unitSize, off / unitSize))).toBe(true);
          }
          // A hole: flat → encrypted zeros, sparse → unallocated (reads zeros).
          const hole = ctBytes.subarray(3 * MiB, 3 * MiB + 4096);
          if (sparse) expect(hole.equals(Buffer.alloc(4096))).toBe(true);
          else expect(hole.equals(xtsReference(true, key, Buffer.alloc(4096), unitSize, (3 * MiB) / unitSize))).toBe(true);
        });
      }
    }
  }
});

describe('convert', () => {
  it('sparse → flat keeps the same DEK and lines, and stays readable; sparse output skips zero grains', async () => {
    const src = join(tmp.dir, 'cv-src.vmdk');
    qemuImg(['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', plainRaw, src]);
    const enc = join(tmp.dir, 'cv-enc.vmdk');
    await encryptDisk(src, enc, { lockers: [phraseLocker('pw')] });
    const flat = join(tmp.dir, 'cv-flat.vmdk');
    await convertDisk(enc, flat, { keys: { passphrase: 'pw' }, subformat: 'monolithicFlat' });
    expect(await readEncryptionParams(flat)).toEqual(await readEncryptionParams(enc));
    const back = join(tmp.dir, 'cv-back.vmdk');
    await convertDisk(flat, back, { keys: { passphrase: 'pw' }, subformat: 'twoGbMaxExtentSparse' });
    const d = await openDisk(back, { keys: { passphrase: 'pw' }, readOnly: true });
    expect(sha256(await d.read(0, CAPACITY))).toBe(sha256(plainImage));
    let allocated = 0;
    for await (const r of d.allocatedRanges()) allocated += r.length;
    await d.close();
    // Data: 300000 B → 5 grains, 5000 B → 1 grain (2 if it straddles), 1 MiB with one zero grain → 15, last 512 → 1.
    expect(allocated).toBeLessThanOrEqual(23 * 65536);
  });

  it('raw → encrypted monolithicFlat by default; encrypted → streamOptimized and → raw refused unless decrypting', async () => {
    const enc = join(tmp.dir, 'raw-enc.vmdk');
    const r = await encryptDisk(plainRaw, enc, { lockers: [phraseLocker('pw')] });
    expect(r.subformat).toBe('monolithicFlat');
    await expect(convertDisk(enc, join(tmp.dir, 'so.vmdk'), { keys: { passphrase: 'pw' }, subformat: 'streamOptimized' })).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED_OUTPUT',
    });
    await expect(convertDisk(enc, join(tmp.dir, 'so.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw' })).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED_OUTPUT',
    });
    await expect(encryptDisk(plainRaw, join(tmp.dir, 'so2.vmdk'), { subformat: 'streamOptimized', lockers: [phraseLocker('pw')] })).rejects.toMatchObject({
      code: 'ERR_UNSUPPORTED_OUTPUT',
    });
    const so = join(tmp.dir, 'dec-so.vmdk');
    await convertDisk(enc, so, { keys: { passphrase: 'pw' }, subformat: 'streamOptimized', decrypt: true });
    const out = join(tmp.dir, 'dec-so.raw');
    qemuImg(['convert', '-q', '-O', 'raw', so, out]);
    expect(sha256(readFileSync(out))).toBe(sha256(plainImage));
    expect(readdirSync(tmp.dir).filter((f) => f.includes('vmseal-tmp'))).toEqual([]);
  });

  it('a streamOptimized input encrypts to monolithicSparse by default', async () => {
    const so = join(tmp.dir, 'in-so.vmdk');
    qemuImg(['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=streamOptimized', plainRaw, so]);
    const enc = join(tmp.dir, 'so-enc.vmdk');
    expect((await encryptDisk(so, enc, { lockers: [phraseLocker('pw')] })).subformat).toBe('monolithicSparse');
    const d = await openDisk(enc, { keys: { passphrase: 'pw' }, readOnly: true });
    expect(sha256(await d.read(0, CAPACITY))).toBe(sha256(plainImage));
    await d.close();
  });

  it('encrypted as plain and plain as encrypted are refused', async () => {
    const enc = join(tmp.dir, 'refuse-enc.vmdk');
    await encryptDisk(plainRaw, enc, { lockers: [phraseLocker('pw')] });
    await expect(encryptDisk(enc, join(tmp.dir, 'x1.vmdk'), { lockers: [phraseLocker('pw')] })).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
    // A convert that keeps the encryption copies the ciphertext without keys where it can
    // (ciphertext-convert.test.ts); into a flat output a sparse input's holes need the DEK.
    const encSparse = join(tmp.dir, 'refuse-enc-sparse.vmdk');
    await encryptDisk(plainRaw, encSparse, { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    await expect(convertDisk(encSparse, join(tmp.dir, 'x2.vmdk'), { subformat: 'monolithicFlat' })).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
    await expect(decryptDisk(plainRaw, join(tmp.dir, 'x3.raw'), { keys: { passphrase: 'pw' } })).rejects.toMatchObject({ code: 'ERR_NOT_ENCRYPTED' });
    await expect(convertDisk(plainRaw, join(tmp.dir, 'x4.raw'), { decrypt: true })).rejects.toMatchObject({ code: 'ERR_NOT_ENCRYPTED' });
    expect(readdirSync(tmp.dir).filter((f) => /^x\d/.test(f) || f.includes('vmseal-tmp') || f.endsWith('.lck'))).toEqual([]);
  });

  it('existing output refused unless force; output = input refused', async () => {
    const enc = join(tmp.dir, 'exists.vmdk');
    await encryptDisk(plainRaw, enc, { lockers: [phraseLocker('pw')] });
    const before = readFileSync(enc);
    await expect(encryptDisk(plainRaw, enc, { lockers: [phraseLocker('pw')] })).rejects.toMatchObject({ code: 'ERR_OUTPUT_EXISTS' });
    expect(readFileSync(enc).equals(before)).toBe(true);
    await encryptDisk(plainRaw, enc, { lockers: [phraseLocker('pw2')], force: true });
    const d = await openDisk(enc, { keys: { passphrase: 'pw2' } });
    await d.close();
    await expect(convertDisk(plainRaw, plainRaw)).rejects.toMatchObject({ code: 'ERR_SAME_FILE' });
  });

  it('a KMS-locked disk made from a provider KEK decrypts with the provider', async () => {
    const kms = new MemoryKeyProvider();
    const enc = join(tmp.dir, 'kms.vmdk');
    await encryptDisk(plainRaw, enc, { subformat: 'monolithicSparse', lockers: [providerLocker(kms)] });
    const out = join(tmp.dir, 'kms.raw');
    await decryptDisk(enc, out, { keys: { providers: [kms] }, subformat: 'raw' });
    expect(sha256(readFileSync(out))).toBe(sha256(plainImage));
  });

  it('plain convert between subformats, no keys involved', async () => {
    const sparse = join(tmp.dir, 'plain-sparse.vmdk');
    await convertDisk(plainRaw, sparse, { subformat: 'monolithicSparse' });
    const d = await openDisk(sparse);
    expect(sha256(await d.read(0, CAPACITY))).toBe(sha256(plainImage));
    await d.close();
    await (await createDisk(join(tmp.dir, 'unused.vmdk'), { capacity: MiB })).close();
  });
});

describe('decrypted outputs are private (they hold plaintext)', () => {
  const modeOf = (f: string) => statSync(f).mode & 0o777;
  let enc: string;
  let oldUmask: number;
  beforeAll(async () => {
    // A permissive umask, as on most systems: without an explicit mode the files would be 0644.
    oldUmask = process.umask(0o022);
    enc = join(tmp.dir, 'private-enc.vmdk');
    await encryptDisk(plainRaw, enc, { subformat: 'twoGbMaxExtentSparse', lockers: [phraseLocker('pw')] });
  });
  afterAll(() => {
    process.umask(oldUmask);
  });

  it('decrypt writes every output file 0600 regardless of umask 022', async () => {
    const dir = join(tmp.dir, 'private-default');
    execFileSync('mkdir', ['-p', dir]);
    await decryptDisk(enc, join(dir, 'dec.vmdk'), { keys: { passphrase: 'pw' } });
    const files = readdirSync(dir);
    expect(files.length).toBeGreaterThan(1); // descriptor and extents
    for (const f of files) expect(modeOf(join(dir, f)), f).toBe(0o600);
    await decryptDisk(enc, join(dir, 'dec.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw' });
    expect(modeOf(join(dir, 'dec.raw'))).toBe(0o600);
    await convertDisk(enc, join(dir, 'conv.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw', decrypt: true });
    expect(modeOf(join(dir, 'conv.raw'))).toBe(0o600);
  });

  it('mode gives other permissions (0640), and a bad mode is refused before anything is written', async () => {
    const dir = join(tmp.dir, 'private-mode');
    execFileSync('mkdir', ['-p', dir]);
    await decryptDisk(enc, join(dir, 'dec.vmdk'), { keys: { passphrase: 'pw' }, mode: 0o640 });
    for (const f of readdirSync(dir)) expect(modeOf(join(dir, f)), f).toBe(0o640);
    for (const mode of [-1, 0o1000, 1.5, '0640' as unknown as number]) {
      await expect(decryptDisk(enc, join(dir, 'bad.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw', mode })).rejects.toMatchObject({
        code: 'ERR_INVALID_ARGUMENT',
      });
    }
    expect(readdirSync(dir).filter((f) => f.startsWith('bad') || f.includes('vmseal-tmp'))).toEqual([]);
  });
});
