// A re-run of an interrupted in-place job with other lockers than its journal's is refused, naming
// what differs, instead of silently finishing with the journal's lockers.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deepRekey, encryptDisk, encryptInPlace } from '../../src/pipeline/index.js';
import { openDisk } from '../../src/disk/index.js';
import { MemoryKeyProvider, patternBytes, phraseLocker, providerLocker, sha256, tempDir } from '../disk/helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let image: Buffer;
let plainRaw: string;

beforeAll(() => {
  tmp = tempDir('vmseal-journal-match-');
  image = patternBytes(4 * MiB, 21);
  plainRaw = join(tmp.dir, 'plain.raw');
  writeFileSync(plainRaw, image);
});
afterAll(() => tmp.cleanup());

function flatDisk(name: string): string {
  const dir = join(tmp.dir, name);
  mkdirSync(dir);
  const p = join(dir, 'disk.vmdk');
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', plainRaw, p]);
  return p;
}

async function plaintextHash(path: string, keys: object): Promise<string> {
  const d = await openDisk(path, { keys, readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

async function failure(p: Promise<unknown>): Promise<{ code?: string; message: string }> {
  return p.then(
    () => {
      throw new Error('expected a rejection');
    },
    (e: { code?: string; message: string }) => e,
  );
}

describe('re-running an interrupted in-place job', () => {
  it('encrypt --in-place: other lockers are refused with what differs; the same ones finish the job', async () => {
    const disk = flatDisk('encrypt');
    const kms = new MemoryKeyProvider();
    const ac = new AbortController();
    const lockers = [providerLocker(kms), phraseLocker('first passphrase')];
    await expect(encryptInPlace(disk, { lockers, chunkSize: 64 * 1024, signal: ac.signal, onProgress: () => ac.abort() })).rejects.toMatchObject({
      code: 'ERR_ABORTED',
    });
    expect(existsSync(disk + '.vmseal-journal')).toBe(true);

    const other = await failure(encryptInPlace(disk, { lockers: [providerLocker(kms), phraseLocker('another passphrase')] }));
    expect(other.code).toBe('ERR_JOURNAL_MISMATCH');
    expect(other.message).toContain("a recovery passphrase that is not the journal's");
    const fewer = await failure(encryptInPlace(disk, { lockers: [providerLocker(kms)] }));
    expect(fewer.message).toContain('no recovery passphrase (the journal has one)');
    const cipher = await failure(encryptInPlace(disk, { lockers, cipher: 'aes-128-xts' }));
    expect(cipher.message).toContain('cipher aes-128-xts (the journal');
    const elsewhere = await failure(encryptInPlace(disk, { lockers: [providerLocker(new MemoryKeyProvider('other-kms')), phraseLocker('first passphrase')] }));
    expect(elsewhere.message).toContain("a key of provider 'other-kms' (the journal has none)");
    expect(elsewhere.message).toContain(`no key of provider '${kms.id}'`);

    const r = await encryptInPlace(disk, { lockers });
    expect(r.resumed).toBe(true);
    expect(await plaintextHash(disk, { passphrase: 'first passphrase' })).toBe(sha256(image));
  });

  it('rekey --deep --in-place: a new passphrase other than the journal one is refused', async () => {
    const dir = join(tmp.dir, 'deep');
    mkdirSync(dir);
    const disk = join(dir, 'enc.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicFlat', lockers: [phraseLocker('old')] });
    const ac = new AbortController();
    await expect(
      deepRekey(disk, {
        keys: { passphrase: 'old' },
        lockers: [phraseLocker('new')],
        inPlace: true,
        chunkSize: 64 * 1024,
        signal: ac.signal,
        onProgress: () => ac.abort(),
      }),
    ).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    const other = await failure(deepRekey(disk, { keys: { passphrase: 'old' }, lockers: [phraseLocker('newer')], inPlace: true }));
    expect(other.code).toBe('ERR_JOURNAL_MISMATCH');
    expect(other.message).toContain('rekey-deep-in-place');
    const r = await deepRekey(disk, { keys: { passphrase: 'old' }, lockers: [phraseLocker('new')], inPlace: true });
    expect(r.resumed).toBe(true);
    expect(await plaintextHash(disk, { passphrase: 'new' })).toBe(sha256(image));
  });
});
