// The data check (format version 2): a descriptor that does not belong to its data is refused
// (ERR_WRONG_DATA) before anything is read; the unit-0 update protocol survives a crash at any step.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createEncryptedDisk, openDisk, readEncryptionParams, resealDataCheck, EncryptedDisk } from '../../src/disk/index.js';
import { bindingOf } from '../../src/disk/keying.js';
import { computeAuthenticator, unlockKeySafe } from '../../src/keys/index.js';
import { createDisk, openDisk as openVmdk } from '../../src/vmdk/index.js';
import { HostFile } from '../../src/vmdk/file.js';
import { deepRekey, encryptDisk, encryptInPlace, decryptDisk, convertDisk, shallowRekey } from '../../src/pipeline/index.js';
import { patternBytes, phraseLocker, tempDir } from './helpers.js';

const MiB = 1 << 20;
const keys = { passphrase: 'pw' };
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-datacheck-');
});
afterAll(() => tmp.cleanup());

const checkOf = (descriptorText: string): string => /encryption\.dataCheck = "([^"]*)"/.exec(descriptorText)![1];
const withCheck = (descriptorText: string, value: string): string =>
  descriptorText.replace(/encryption\.dataCheck = "[^"]*"/, `encryption.dataCheck = "${value}"`);
const NONE = '-'.repeat(64);

async function flatDisk(name: string, unit0: Buffer): Promise<string> {
  const path = join(tmp.dir, `${name}.vmdk`);
  const d = await createEncryptedDisk(path, { capacity: MiB, subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
  await d.write(0, unit0);
  await d.close();
  return path;
}

async function readHead(path: string, length = 512): Promise<Buffer> {
  const d = await openDisk(path, { keys, readOnly: true });
  try {
    return await d.read(0, length);
  } finally {
    await d.close();
  }
}

describe('a descriptor on data it does not belong to is refused', () => {
  it('the old descriptor copied back after a deep rekey: ERR_WRONG_DATA (it used to open and decrypt garbage)', async () => {
    const path = await flatDisk('rollback', patternBytes(4096, 1));
    const old = readFileSync(path, 'utf8');
    await deepRekey(path, { keys, lockers: [phraseLocker('pw')] });
    expect((await readHead(path, 4096)).equals(patternBytes(4096, 1))).toBe(true);
    writeFileSync(path, old); // the old KeySafe still opens with the same passphrase: only the data check catches it
    await expect(openDisk(path, { keys })).rejects.toMatchObject({ code: 'ERR_WRONG_DATA', message: expect.stringContaining('does not belong to the data') });
  });

  it("another disk's encryption lines on a disk of the same size: ERR_WRONG_DATA", async () => {
    const a = await flatDisk('lines-a', patternBytes(512, 2));
    const b = await flatDisk('lines-b', patternBytes(512, 3));
    const linesOf = (t: string): string =>
      t
        .split('\n')
        .filter((l) => l.startsWith('encryption.'))
        .join('\n');
    const textB = readFileSync(b, 'utf8');
    writeFileSync(b, textB.replace(linesOf(textB), linesOf(readFileSync(a, 'utf8'))));
    await expect(openDisk(b, { keys })).rejects.toMatchObject({ code: 'ERR_WRONG_DATA' });
  });

  it('a sparse disk whose unit 0 is a hole is refused (a hole reads as zeros under any key)', async () => {
    const enc = join(tmp.dir, 'hole-enc.vmdk');
    await (await createEncryptedDisk(enc, { capacity: MiB, lockers: [phraseLocker('pw')] })).close();
    const lines = (await openVmdk(enc, { readOnly: true, allowEncrypted: true }).then(async (d) => {
      const out = d.descriptor!.entries().filter(([k]) => k.startsWith('encryption.'));
      await d.close();
      return out;
    })) as Array<[string, string]>;
    const hole = join(tmp.dir, 'hole.vmdk');
    const plain = await createDisk(hole, { capacity: MiB, subformat: 'monolithicSparse' });
    await plain.updateDescriptor((desc) => {
      let after: string | undefined;
      for (const [k, v] of lines) {
        desc.set(k, v, after ? { after } : {});
        after = k;
      }
    });
    await plain.close();
    await expect(openDisk(hole, { keys })).rejects.toMatchObject({ code: 'ERR_WRONG_DATA', message: expect.stringContaining('not backed by data') });
  });
});

describe('the unit-0 update protocol', () => {
  it('a write of unit 0 commits a new value on close; writes elsewhere leave the descriptor alone but for the new CID', async () => {
    const path = await flatDisk('commit', patternBytes(512, 4));
    const before = readFileSync(path, 'utf8');
    const d = (await openDisk(path, { keys })) as EncryptedDisk;
    await d.write(4096, Buffer.from('elsewhere'));
    await d.flush();
    // The first write after opening draws a new CID (as qemu does: src/vmdk/disk.ts), nothing else changes.
    const withoutCid = (t: string) => t.replace(/\nCID=[0-9a-f]+\n/, '\nCID=?\n');
    expect(withoutCid(readFileSync(path, 'utf8'))).toBe(withoutCid(before));
    expect(readFileSync(path, 'utf8')).not.toBe(before);
    await d.write(10, Buffer.from('unit zero'));
    const during = checkOf(readFileSync(path, 'utf8'));
    expect(during.slice(0, 64)).toBe(checkOf(before).slice(0, 64)); // old value still committed…
    expect(during.slice(65)).not.toBe(NONE); // …the new one pending
    await d.close();
    const after = checkOf(readFileSync(path, 'utf8'));
    expect(after).toBe(`${during.slice(65)}.${NONE}`);
    expect((await readHead(path)).subarray(10, 19).toString()).toBe('unit zero');
  });

  it('a crash after the pending value, before unit 0 is written: opens with the old data', async () => {
    const path = await flatDisk('torn1', patternBytes(512, 5));
    const d = (await openDisk(path, { keys })) as EncryptedDisk;
    const inner = d.innerDisk as { write: (p: number, b: Uint8Array) => Promise<void> };
    inner.write = async () => {
      throw new Error('simulated crash');
    };
    await expect(d.write(0, patternBytes(512, 6))).rejects.toThrow('simulated crash');
    const check = checkOf(readFileSync(path, 'utf8'));
    expect(check.slice(65)).not.toBe(NONE); // step 1 was durable
    await d.close();
    expect((await readHead(path)).equals(patternBytes(512, 5))).toBe(true);
  });

  it('a crash after unit 0 is written, before the commit: opens with the new data, and the next writer commits', async () => {
    const path = await flatDisk('torn2', patternBytes(512, 7));
    const d = (await openDisk(path, { keys })) as EncryptedDisk;
    await d.write(0, patternBytes(512, 8));
    // "Crash": the files as they are now, before flush/close; keep a copy and let the process go on.
    const crashed = join(tmp.dir, 'torn2-crashed.vmdk');
    writeFileSync(crashed, readFileSync(path, 'utf8').replace('torn2-flat.vmdk', 'torn2-crashed-flat.vmdk'));
    copyFileSync(join(tmp.dir, 'torn2-flat.vmdk'), join(tmp.dir, 'torn2-crashed-flat.vmdk'));
    await d.close();
    const pending = checkOf(readFileSync(crashed, 'utf8'));
    expect(pending.slice(65)).not.toBe(NONE);
    expect((await readHead(crashed)).equals(patternBytes(512, 8))).toBe(true);
    await (await openDisk(crashed, { keys })).close(); // a writable open commits the pending value
    expect(checkOf(readFileSync(crashed, 'utf8'))).toBe(`${pending.slice(65)}.${NONE}`);
  });

  it('after a unit-0 write whose sync failed, the next one commits what unit 0 really holds before its pending value', async () => {
    const path = await flatDisk('eio', patternBytes(512, 16));
    const d = (await openDisk(path, { keys })) as EncryptedDisk;
    const inner = d.innerDisk as { flush: () => Promise<void>; write: (p: number, b: Uint8Array) => Promise<void> };
    const realFlush = inner.flush.bind(inner);
    const realWrite = inner.write.bind(inner);
    inner.flush = async () => {
      inner.flush = realFlush;
      throw new Error('EIO on sync');
    };
    await expect(d.write(0, patternBytes(512, 17))).rejects.toThrow('EIO on sync'); // the data reached the file, unsynced
    inner.write = async () => {
      throw new Error('simulated crash');
    };
    await expect(d.write(0, patternBytes(512, 18))).rejects.toThrow('simulated crash');
    // The files as a crash now would leave them (the page cache kept): unit 0 holds the first write.
    const r = await openDisk(path, { keys, readOnly: true });
    expect((await r.read(0, 512)).equals(patternBytes(512, 17))).toBe(true);
    await r.close();
    inner.write = realWrite;
    await d.close();
  });

  it('neither value matching is refused; resealDataCheck (with the keys) repairs it', async () => {
    const path = await flatDisk('neither', patternBytes(512, 9));
    const text = readFileSync(path, 'utf8');
    writeFileSync(path, withCheck(text, `${'0'.repeat(64)}.${'1'.repeat(64)}`));
    await expect(openDisk(path, { keys })).rejects.toMatchObject({ code: 'ERR_WRONG_DATA' });
    await expect(resealDataCheck(path, { keys: { passphrase: 'wrong' } })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    const r = await resealDataCheck(path, { keys });
    expect(r.dataCheck).toBe(checkOf(text));
    expect(readFileSync(path, 'utf8')).toBe(text);
    expect((await readHead(path)).equals(patternBytes(512, 9))).toBe(true);
  });

  it('an embedded descriptor (monolithicSparse) is updated in place, keeping its length', async () => {
    const path = join(tmp.dir, 'embedded.vmdk');
    const d = await createEncryptedDisk(path, { capacity: MiB, lockers: [phraseLocker('pw')] });
    const before = readFileSync(path);
    await d.write(0, patternBytes(1024, 10));
    await d.close();
    const after = readFileSync(path);
    // Only the data check's bytes of the descriptor area changed (and the data, grain 0 at the end of the metadata).
    const area = (b: Buffer): string => b.subarray(512, 512 + 20 * 512).toString('latin1');
    expect(area(after).length).toBe(area(before).length);
    expect(area(after).replace(/dataCheck = "[^"]*"/, '')).toBe(area(before).replace(/dataCheck = "[^"]*"/, ''));
    expect((await readHead(path, 1024)).equals(patternBytes(1024, 10))).toBe(true);
  });
});

describe('an embedded descriptor changes one sector per update', () => {
  it('each data-check update of a monolithicSparse disk writes one 512-byte sector of the descriptor area', async () => {
    const path = join(tmp.dir, 'one-sector.vmdk');
    await (await createEncryptedDisk(path, { capacity: MiB, lockers: [phraseLocker('pw')] })).close();
    const head = readFileSync(path).subarray(0, 64);
    const areaStart = Number(head.readBigUInt64LE(28)) * 512;
    const areaEnd = areaStart + Number(head.readBigUInt64LE(36)) * 512;
    const d = await openDisk(path, { keys });
    const writes: Array<[number, number]> = [];
    const real = HostFile.prototype.writeAt;
    HostFile.prototype.writeAt = function (data: Uint8Array, pos: number) {
      if (this.path === path && pos < areaEnd && pos + data.byteLength > areaStart) writes.push([pos, data.byteLength]);
      return real.call(this, data, pos);
    };
    try {
      await d.write(0, patternBytes(512, 19)); // step 1: pending
      await d.close(); // step 3: committed
    } finally {
      HostFile.prototype.writeAt = real;
    }
    // The new CID of the first write (8 hex digits, as long as the old one), then the two data-check steps.
    expect(writes).toEqual([
      [areaStart, 512],
      [areaStart, 512],
      [areaStart, 512],
    ]);
  });
});

describe('format version 1 and jobs', () => {
  it('a version-1 disk (no data check) still opens; resealDataCheck moves it to version 2', async () => {
    const path = await flatDisk('v1', patternBytes(512, 11));
    const params = (await readEncryptionParams(path))!;
    const dek = (await unlockKeySafe(params.keySafe, keys)).key;
    const authenticator = computeAuthenticator(dek, bindingOf({ ...params, formatVersion: 1 }, MiB));
    const v1 = readFileSync(path, 'utf8')
      .replace('encryption.format = "vmseal/2"', 'encryption.format = "vmseal/1"')
      .replace(/encryption\.dataCheck = .*\n/, '')
      .replace(params.authenticator, authenticator);
    writeFileSync(path, v1);
    expect((await readHead(path)).equals(patternBytes(512, 11))).toBe(true);
    // A convert keeps the DEK and the authenticator, which binds version 1: the copy stays version 1.
    const copy = join(tmp.dir, 'v1-copy.vmdk');
    await convertDisk(path, copy, { keys, subformat: 'monolithicSparse' });
    expect(await readEncryptionParams(copy)).toMatchObject({ formatVersion: 1, authenticator });
    expect((await readEncryptionParams(copy))!.dataCheck).toBeUndefined();
    expect((await readHead(copy)).equals(patternBytes(512, 11))).toBe(true);
    const r = await resealDataCheck(path, { keys });
    expect(r.previousFormatVersion).toBe(1);
    expect((await readEncryptionParams(path))!.formatVersion).toBe(2);
    expect((await readHead(path)).equals(patternBytes(512, 11))).toBe(true);
  });

  it('in-place encryption of a sparse disk whose unit 0 is a hole allocates it and ends with a data check', async () => {
    const path = join(tmp.dir, 'inplace.vmdk');
    const plain = await createDisk(path, { capacity: 2 * MiB, subformat: 'monolithicSparse' });
    await plain.write(MiB, patternBytes(4096, 12));
    await plain.close();
    await encryptInPlace(path, { lockers: [phraseLocker('pw')] });
    const params = (await readEncryptionParams(path))!;
    expect(params.formatVersion).toBe(2);
    expect(params.dataCheck).toMatch(/^[0-9a-f]{64}\.-{64}$/);
    const d = await openDisk(path, { keys });
    expect((await d.read(0, 512)).equals(Buffer.alloc(512))).toBe(true);
    expect((await d.read(MiB, 4096)).equals(patternBytes(4096, 12))).toBe(true);
    await d.close();
  });

  it('an encrypted sparse copy of an image whose first grain is zeros still backs unit 0 (and opens)', async () => {
    const raw = join(tmp.dir, 'zero-head.raw');
    const image = Buffer.alloc(2 * MiB);
    patternBytes(4096, 14).copy(image, MiB);
    writeFileSync(raw, image);
    const out = join(tmp.dir, 'zero-head.vmdk');
    await encryptDisk(raw, out, { lockers: [phraseLocker('pw')], subformat: 'monolithicSparse' });
    const stored = await openVmdk(out, { readOnly: true, allowEncrypted: true });
    const ranges = [];
    for await (const r of stored.allocatedRanges(0, 4096)) ranges.push(r);
    await stored.close();
    expect(ranges.length).toBeGreaterThan(0);
    expect((await readHead(out, 4096)).equals(Buffer.alloc(4096))).toBe(true);
  });

  it('an in-place deep rekey refuses a descriptor that does not belong to the data, and leaves it as it was', async () => {
    const path = await flatDisk('rekey-wrong', patternBytes(512, 15));
    const text = readFileSync(path, 'utf8');
    const wrong = withCheck(text, `${'0'.repeat(64)}.${NONE}`);
    writeFileSync(path, wrong);
    await expect(deepRekey(path, { keys, lockers: [phraseLocker('pw')], inPlace: true })).rejects.toMatchObject({ code: 'ERR_WRONG_DATA' });
    expect(readFileSync(path, 'utf8')).toBe(wrong);
    expect(existsSync(`${path}.vmseal-journal`)).toBe(false);
  });

  it('copy jobs write a data check for their output; in-place deep rekey too; decrypt drops it', async () => {
    const src = await flatDisk('jobs', patternBytes(8192, 13));
    const conv = join(tmp.dir, 'jobs-conv.vmdk');
    await convertDisk(src, conv, { keys, subformat: 'monolithicSparse' });
    expect((await readEncryptionParams(conv))!.dataCheck).toBe((await readEncryptionParams(src))!.dataCheck);
    await deepRekey(conv, { keys, lockers: [phraseLocker('pw')], inPlace: true });
    expect((await readEncryptionParams(conv))!.dataCheck).not.toBe((await readEncryptionParams(src))!.dataCheck);
    expect((await readHead(conv, 8192)).equals(patternBytes(8192, 13))).toBe(true);
    const before = (await readEncryptionParams(conv))!.dataCheck;
    await shallowRekey(conv, { keys, lockers: [phraseLocker('pw2')] });
    expect((await readEncryptionParams(conv))!.dataCheck).toBe(before); // same DEK: same check
    const plainOut = join(tmp.dir, 'jobs-plain.vmdk');
    await decryptDisk(conv, plainOut, { keys: { passphrase: 'pw2' } });
    expect(await readEncryptionParams(plainOut)).toBeNull();
  });
});
