import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedDisk, openDisk, EncryptedDisk, readEncryptionParams } from '../../src/disk/index.js';
import { openDisk as openVmdk, createDisk } from '../../src/vmdk/index.js';
import { unlockKeySafe } from '../../src/keys/index.js';
import { MemoryKeyProvider, patternBytes, phraseLocker, providerLocker, tempDir, xtsReference } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-disk-');
});
afterAll(() => tmp.cleanup());

async function dekOf(path: string, passphrase: string): Promise<Buffer> {
  const params = await readEncryptionParams(path);
  return (await unlockKeySafe(params!.keySafe, { passphrase })).key;
}

describe('EncryptedDisk random access', () => {
  for (const subformat of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse'] as const) {
    for (const unitSize of [512, 4096] as const) {
      it(`${subformat}, ${unitSize}-byte units: writes at any offset read back, also after reopening`, async () => {
        const path = join(tmp.dir, `ra-${subformat}-${unitSize}.vmdk`);
        const capacity = 4 * MiB;
        const model = Buffer.alloc(capacity);
        const disk = await createEncryptedDisk(path, { capacity, subformat, unitSize, lockers: [phraseLocker('pw')] });
        const writes: Array<[number, number]> = [
          [0, 100],
          [511, 2],
          [4095, 4098],
          [70000, 1],
          [MiB - 3, 200000],
          [capacity - 17, 17],
          [3 * MiB, 65536],
        ];
        let seed = 1;
        for (const [pos, len] of writes) {
          const data = patternBytes(len, seed++);
          await disk.write(pos, data);
          data.copy(model, pos);
        }
        for (const [pos, len] of [...writes, [0, capacity] as [number, number], [12345, 54321] as [number, number]]) {
          expect((await disk.read(pos, len)).equals(model.subarray(pos, pos + len))).toBe(true);
        }
        await disk.close();
        const again = await openDisk(path, { keys: { passphrase: 'pw' }, readOnly: true });
        expect(again).toBeInstanceOf(EncryptedDisk);
        expect((await again.read(0, capacity)).equals(model)).toBe(true);
        await again.close();
      });
    }
  }

  it('a flat extent holds exactly aes-xts-plain64 of the virtual disk (tweak = sector number)', async () => {
    const path = join(tmp.dir, 'flatref.vmdk');
    const capacity = 1 * MiB;
    const disk = await createEncryptedDisk(path, { capacity, subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
    const plain = patternBytes(capacity, 7);
    await disk.write(0, plain);
    await disk.close();
    const key = await dekOf(path, 'pw');
    const extent = readFileSync(join(tmp.dir, 'flatref-flat.vmdk'));
    expect(extent.equals(xtsReference(true, key, plain, 512, 0))).toBe(true);
  });

  it('keeps unallocated grains unallocated (but grain 0, for the data check); a write into one writes the whole grain as ciphertext', async () => {
    const path = join(tmp.dir, 'grains.vmdk');
    const capacity = 2 * MiB;
    const disk = await createEncryptedDisk(path, { capacity, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    await disk.write(65536 + 1000, Buffer.from('hello'));
    const ranges = [];
    for await (const r of disk.allocatedRanges()) ranges.push(r);
    expect(ranges).toEqual([{ offset: 0, length: 131072 }]);
    expect((await disk.read(0, 65536)).equals(Buffer.alloc(65536))).toBe(true);
    await disk.close();
    // The grain on disk: XTS of (zeros with "hello" at 1000), every unit, nothing left as plaintext zeros.
    const raw = await openVmdk(path, { readOnly: true, allowEncrypted: true });
    const cipherGrain = await raw.read(65536, 65536);
    await raw.close();
    const expected = Buffer.alloc(65536);
    expected.write('hello', 1000);
    const key = await dekOf(path, 'pw');
    expect(cipherGrain.equals(xtsReference(true, key, expected, 512, 128))).toBe(true);
  });

  it('refuses an encrypted disk without keys, keys for a plain disk, and the plain VMDK layer refuses it too', async () => {
    const enc = join(tmp.dir, 'refuse.vmdk');
    await (await createEncryptedDisk(enc, { capacity: MiB, lockers: [phraseLocker('pw')] })).close();
    await expect(openDisk(enc)).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
    await expect(openVmdk(enc)).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
    await expect(openDisk(enc, { keys: { passphrase: 'wrong' } })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    const plain = join(tmp.dir, 'plain.vmdk');
    await (await createDisk(plain, { capacity: MiB })).close();
    await expect(openDisk(plain, { keys: { passphrase: 'pw' } })).rejects.toMatchObject({ code: 'ERR_NOT_ENCRYPTED' });
    const p = await openDisk(plain);
    expect(p).not.toBeInstanceOf(EncryptedDisk);
    await p.close();
  });

  it('refuses a KeySafe too long for a descriptor value, at once', async () => {
    const lockers = Array.from({ length: 12 }, (_, i) => phraseLocker(`pw${i}`));
    await expect(createEncryptedDisk(join(tmp.dir, 'many.vmdk'), { capacity: MiB, lockers })).rejects.toMatchObject({
      code: 'ERR_ENCRYPTION_METADATA',
      message: expect.stringContaining('use fewer lockers'),
    });
  });

  it('refuses raw and streamOptimized for an encrypted disk', async () => {
    for (const subformat of ['raw', 'streamOptimized'] as const) {
      await expect(
        createEncryptedDisk(join(tmp.dir, `x-${subformat}.vmdk`), { capacity: MiB, subformat, lockers: [phraseLocker('pw')] }),
      ).rejects.toMatchObject({
        code: 'ERR_UNSUPPORTED_OUTPUT',
      });
    }
  });

  it('opens with a provider locker, and with the recovery passphrase when the provider is down', async () => {
    const kms = new MemoryKeyProvider();
    const path = join(tmp.dir, 'two-lockers.vmdk');
    const disk = await createEncryptedDisk(path, { capacity: MiB, lockers: [providerLocker(kms), phraseLocker('recovery')] });
    await disk.write(0, Buffer.from('data'));
    await disk.close();
    const a = await openDisk(path, { keys: { providers: [kms] } });
    expect((await a.read(0, 4)).toString()).toBe('data');
    await a.close();
    kms.down = true;
    await expect(openDisk(path, { keys: { providers: [kms] } })).rejects.toMatchObject({ code: 'ERR_DISK_LOCKED' });
    const b = await openDisk(path, { keys: { passphrase: 'recovery' } });
    expect((await b.read(0, 4)).toString()).toBe('data');
    await b.close();
  });

  it('a read-only encrypted disk refuses writes; a closed one refuses reads', async () => {
    const path = join(tmp.dir, 'ro.vmdk');
    await (await createEncryptedDisk(path, { capacity: MiB, lockers: [phraseLocker('pw')] })).close();
    const d = await openDisk(path, { readOnly: true, keys: { passphrase: 'pw' } });
    await expect(d.write(0, Buffer.alloc(1))).rejects.toMatchObject({ code: 'ERR_READ_ONLY' });
    await d.close();
    await expect(d.read(0, 1)).rejects.toMatchObject({ code: 'ERR_CLOSED' });
    await expect(d.read(MiB, 1)).rejects.toBeTruthy();
    expect(statSync(path).size).toBeGreaterThan(0);
  });
});

describe('tampering is detected before any data is decrypted', () => {
  const cases: Array<[string, (text: string) => string, string]> = [
    ['cipher', (t) => t.replace('encryption.cipher = "aes-256-xts"', 'encryption.cipher = "aes-128-xts"'), 'ERR_ENCRYPTION_METADATA'],
    ['unit size', (t) => t.replace('encryption.dataUnitSize = "512"', 'encryption.dataUnitSize = "4096"'), 'ERR_BINDING'],
    ['disk id', (t) => t.replace(/encryption\.diskId = "([0-9a-f])/, (_m, c) => `encryption.diskId = "${c === '0' ? '1' : '0'}`), 'ERR_BINDING'],
    [
      'authenticator',
      (t) => t.replace(/encryption\.authenticator = "v1\.(.)/, (_m, c) => `encryption.authenticator = "v1.${c === 'A' ? 'B' : 'A'}`),
      'ERR_BINDING',
    ],
    ['capacity', (t) => t.replace(/RW (\d+) FLAT/, (_m, n) => `RW ${Number(n) - 8} FLAT`), 'ERR_BINDING'],
    ['format version', (t) => t.replace('encryption.format = "vmseal/2"', 'encryption.format = "vmseal/1"'), 'ERR_ENCRYPTION_METADATA'],
    ['a missing line', (t) => t.replace(/encryption\.diskId = .*\n/, ''), 'ERR_ENCRYPTION_METADATA'],
    ['a KeySafe from another disk', (t) => t, 'ERR_BINDING'],
  ];
  for (const [what, edit, code] of cases) {
    it(`changed ${what} → ${code}`, async () => {
      const path = join(tmp.dir, `tamper-${what.replace(/\W/g, '')}.vmdk`);
      const d = await createEncryptedDisk(path, { capacity: MiB, subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
      await d.write(0, Buffer.from('secret'));
      await d.close();
      let text = readFileSync(path, 'utf8');
      if (what === 'a KeySafe from another disk') {
        const other = join(tmp.dir, 'tamper-other.vmdk');
        await (await createEncryptedDisk(other, { capacity: MiB, subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] })).close();
        const ks = /encryption\.keySafe = "([^"]*)"/.exec(readFileSync(other, 'utf8'))![1];
        text = text.replace(/encryption\.keySafe = "[^"]*"/, `encryption.keySafe = "${ks}"`);
      } else {
        const edited = edit(text);
        expect(edited).not.toBe(text);
        text = edited;
      }
      writeFileSync(path, text);
      await expect(openDisk(path, { keys: { passphrase: 'pw' } })).rejects.toMatchObject({ code });
    });
  }
});
