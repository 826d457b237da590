import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, readdirSync, existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { encryptDisk, encryptInPlace, deepRekey, shallowRekey, resumeDisk } from '../../src/pipeline/index.js';
import { openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { describeKeySafe, KeyCache, LocalKeyProvider, unlockKeySafe } from '../../src/keys/index.js';
import { MemoryKeyProvider, patternBytes, phraseLocker, providerLocker, sha256, tempDir } from '../disk/helpers.js';

const MiB = 1 << 20;
const CAPACITY = 4 * MiB;
let tmp: ReturnType<typeof tempDir>;
let image: Buffer;
let plainRaw: string;

beforeAll(() => {
  tmp = tempDir('vmseal-rekey-');
  image = Buffer.alloc(CAPACITY);
  patternBytes(700_000, 11).copy(image, 0);
  patternBytes(300_000, 12).copy(image, 3 * MiB);
  plainRaw = join(tmp.dir, 'plain.raw');
  writeFileSync(plainRaw, image);
});
afterAll(() => tmp.cleanup());

async function plaintextHash(path: string, keys: object): Promise<string> {
  const d = await openDisk(path, { keys, readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

function qemuSource(dir: string, subformat: string): string {
  mkdirSync(dir, { recursive: true });
  const p = join(dir, 'disk.vmdk');
  execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${subformat}`, plainRaw, p]);
  return p;
}

/** The ddb.uuid line of a disk's descriptor (embedded in a monolithicSparse file's first KiBs, or a text file). */
const ddbUuid = (disk: string): string | undefined =>
  /^ddb\.uuid = "([^"]*)"/m.exec(
    readFileSync(disk)
      .subarray(0, 64 * 1024)
      .toString('latin1'),
  )?.[1];

const leftovers = (dir: string) => readdirSync(dir).filter((f) => /vmseal-(tmp|journal)|\.lck$|\.tmp$/.test(f));

describe('in-place encryption', () => {
  for (const subformat of ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse'] as const) {
    it(`${subformat}: encrypts where it is; the same data decrypts; no journal left`, async () => {
      const dir = join(tmp.dir, `inplace-${subformat}`);
      const disk = qemuSource(dir, subformat);
      const r = await encryptInPlace(disk, { lockers: [phraseLocker('pw')], chunkSize: 256 * 1024 });
      expect(r).toMatchObject({ operation: 'encrypt', encrypted: true, output: disk });
      expect(await plaintextHash(disk, { passphrase: 'pw' })).toBe(sha256(image));
      expect(leftovers(dir)).toEqual([]);
      const info = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', disk], { encoding: 'utf8' }));
      expect(info['virtual-size']).toBe(CAPACITY);
      // The same call again (as after a crash right at the end) finds the job done; other lockers are refused.
      expect(await encryptInPlace(disk, { lockers: [phraseLocker('pw')] })).toMatchObject({ resumed: true, bytesProcessed: 0 });
      await expect(encryptInPlace(disk, { lockers: [phraseLocker('other')] })).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
      expect(await resumeDisk(disk, { keys: { passphrase: 'pw' } })).toBeNull();
    });
  }

  it('cancelled half way: ERR_ABORTED, the disk is refused as mid-job, resumeDisk finishes it', async () => {
    const dir = join(tmp.dir, 'inplace-abort');
    const disk = qemuSource(dir, 'monolithicFlat');
    const ac = new AbortController();
    // The first progress event comes after the first chunk is done: abort there.
    const job = encryptInPlace(disk, { lockers: [phraseLocker('pw')], chunkSize: 64 * 1024, signal: ac.signal, onProgress: () => ac.abort() });
    await expect(job).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(existsSync(disk + '.vmseal-journal')).toBe(true);
    await expect(openDisk(disk, { keys: { passphrase: 'pw' } })).rejects.toMatchObject({ code: 'ERR_INTERRUPTED_JOB' });
    const r = await resumeDisk(disk, { keys: { passphrase: 'pw' } });
    expect(r).toMatchObject({ resumed: true, encrypted: true });
    expect(await plaintextHash(disk, { passphrase: 'pw' })).toBe(sha256(image));
    expect(leftovers(dir)).toEqual([]);
  });

  it('refuses raw images', async () => {
    await expect(encryptInPlace(plainRaw, { lockers: [phraseLocker('pw')] })).rejects.toMatchObject({ code: 'ERR_UNSUPPORTED_OUTPUT' });
  });
});

describe('deep rekey', () => {
  for (const inPlace of [false, true]) {
    for (const subformat of ['monolithicSparse', 'twoGbMaxExtentFlat'] as const) {
      it(`${inPlace ? 'in place' : 'by copy'}, ${subformat}: new DEK, new disk id, same plaintext; the old key no longer opens it`, async () => {
        const dir = join(tmp.dir, `deep-${inPlace}-${subformat}`);
        mkdirSync(dir, { recursive: true });
        const disk = join(dir, 'enc.vmdk');
        await encryptDisk(plainRaw, disk, { subformat, lockers: [phraseLocker('old')] });
        const before = await readEncryptionParams(disk);
        const uuidBefore = ddbUuid(disk);
        const r = await deepRekey(disk, { keys: { passphrase: 'old' }, lockers: [phraseLocker('new')], inPlace, unitSize: 4096, chunkSize: 512 * 1024 });
        expect(r).toMatchObject({ operation: 'rekey-deep', encrypted: true });
        const after = await readEncryptionParams(disk);
        expect(after!.diskId).not.toBe(before!.diskId);
        // The same disk, rewritten: its ddb.uuid (what a backup history and vSphere follow) stays.
        expect(uuidBefore).toMatch(/^[0-9a-f]{2}( [0-9a-f]{2}){15}$/);
        expect(ddbUuid(disk)).toBe(uuidBefore);
        expect(after!.unitSize).toBe(4096);
        expect(await plaintextHash(disk, { passphrase: 'new' })).toBe(sha256(image));
        await expect(openDisk(disk, { keys: { passphrase: 'old' } })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
        expect(leftovers(dir)).toEqual([]);
      });
    }
  }

  it('by default re-locks under a new key of each provider; a provider that cannot tell key owners keeps the old one', async () => {
    const kms = new MemoryKeyProvider();
    const disk = join(tmp.dir, 'deep-default.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicSparse', lockers: [providerLocker(kms)] });
    const keyId = describeKeySafe((await readEncryptionParams(disk))!.keySafe)[0].keyId!;
    const r = await deepRekey(disk, { keys: { providers: [kms] } });
    const lockers = describeKeySafe((await readEncryptionParams(disk))!.keySafe);
    expect(lockers).toHaveLength(1);
    expect(lockers[0]!.providerId).toBe(kms.id);
    expect(lockers[0]!.keyId).not.toBe(keyId);
    expect(r.keyRotation).toMatchObject({ retired: [], destroyed: [], kept: [{ providerId: kms.id, keyId, reason: 'unsupported' }] });
    expect(await plaintextHash(disk, { providers: [kms] })).toBe(sha256(image));
  });

  it('retires the old local KEK made for the disk, and only that one', async () => {
    const home = join(tmp.dir, 'retire-home');
    const local = new LocalKeyProvider({ home, scrypt: { n: 16, r: 1, p: 1 } });
    const shared = await local.createKey({ name: 'shared' });
    const disk = join(tmp.dir, 'deep-retire.vmdk');
    await encryptDisk(plainRaw, disk, {
      subformat: 'monolithicSparse',
      lockers: [
        { kind: 'provider', provider: local },
        { kind: 'provider', provider: local, keyId: shared.keyId },
      ],
    });
    const before = (await readEncryptionParams(disk))!;
    const own = describeKeySafe(before.keySafe)[0]!.keyId!;
    expect(await local.keyOwner(own)).toBe(before.diskId);
    expect(await local.keyOwner(shared.keyId)).toBeUndefined();
    const cache = new KeyCache();
    const r = await deepRekey(disk, { keys: { providers: [local], cache } });
    expect(r.keyRotation!.retired).toEqual([{ providerId: 'local', keyId: own }]);
    // A cached KEK is used without asking the provider: the retired one (cached by the unlock) is forgotten.
    expect(cache.has(local, own)).toBe(false);
    expect(r.keyRotation!.kept).toMatchObject([{ keyId: shared.keyId, reason: 'shared' }]);
    const after = (await readEncryptionParams(disk))!;
    // One new KEK for the provider, made for the new disk id.
    const next = describeKeySafe(after.keySafe).map((l) => l.keyId!);
    expect(next).toHaveLength(1);
    expect(await local.keyOwner(next[0]!)).toBe(after.diskId);
    const states = Object.fromEntries((await local.list()).map((k) => [k.keyId, k.state]));
    expect(states).toMatchObject({ [own]: 'retired', [shared.keyId]: 'active', [next[0]!]: 'active' });
    await expect(local.getKey(own)).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED' });
    expect(await new LocalKeyProvider({ home, allowRetired: true }).getKey(own)).toHaveLength(32);
    // The descriptor of before, put back: its own key is retired, but the shared key still opens it
    // (which is why the CLI says so in a note).
    const opened = await unlockKeySafe(before.keySafe, { providers: [local] });
    opened.key.fill(0);
    expect(opened.unlockedBy).toMatchObject({ keyId: shared.keyId });
    expect(opened.unlockedBy.kind === 'provider' && opened.unlockedBy.keyId).not.toBe(own);
  });
});

describe('deep rekey interrupted, then resumed', () => {
  it('resumeDisk finishes it and retires the old KEK made for the disk', async () => {
    const dir = join(tmp.dir, 'deep-resume-retire');
    mkdirSync(dir);
    const local = new LocalKeyProvider({ home: join(dir, 'home') });
    const disk = join(dir, 'enc.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicFlat', lockers: [{ kind: 'provider', provider: local }] });
    const old = describeKeySafe((await readEncryptionParams(disk))!.keySafe)[0]!.keyId!;
    const ac = new AbortController();
    await expect(
      deepRekey(disk, { keys: { providers: [local] }, inPlace: true, chunkSize: 64 * 1024, signal: ac.signal, onProgress: () => ac.abort() }),
    ).rejects.toMatchObject({
      code: 'ERR_ABORTED',
    });
    expect((await local.list()).find((k) => k.keyId === old)!.state).toBe('active');
    const r = await resumeDisk(disk, { keys: { providers: [local] } });
    expect(r!.keyRotation!.retired).toEqual([{ providerId: 'local', keyId: old }]);
    expect(await plaintextHash(disk, { providers: [local] })).toBe(sha256(image));
    await expect(local.getKey(old)).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED' });
  });
});

describe('shallow rekey', () => {
  for (const subformat of ['monolithicFlat', 'monolithicSparse'] as const) {
    it(`${subformat}: add a recovery passphrase, move to a new KEK, remove the passphrase — data bytes untouched`, async () => {
      const kms = new MemoryKeyProvider();
      const dir = join(tmp.dir, `shallow-${subformat}`);
      mkdirSync(dir, { recursive: true });
      const disk = join(dir, 'enc.vmdk');
      await encryptDisk(plainRaw, disk, { subformat, lockers: [providerLocker(kms)] });
      const dataFile = subformat === 'monolithicFlat' ? join(dir, 'enc-flat.vmdk') : disk;
      const dataHash = () => {
        const b = readFileSync(dataFile);
        return sha256(subformat === 'monolithicFlat' ? b : b.subarray(64 * 1024)); // sparse: past the header and descriptor
      };
      const h0 = dataHash();
      const p0 = await readEncryptionParams(disk);

      await shallowRekey(disk, { keys: { providers: [kms] }, addLockers: [phraseLocker('recovery')] });
      const p1 = await readEncryptionParams(disk);
      expect(describeKeySafe(p1!.keySafe).map((l) => l.kind)).toEqual(['provider', 'passphrase']);
      expect(p1!.diskId).toBe(p0!.diskId);
      expect(await plaintextHash(disk, { passphrase: 'recovery' })).toBe(sha256(image));

      const kms2 = new MemoryKeyProvider('kms2');
      await shallowRekey(disk, { keys: { passphrase: 'recovery' }, removeLockers: (l) => l.kind === 'provider', addLockers: [providerLocker(kms2)] });
      kms.down = true;
      expect(await plaintextHash(disk, { providers: [kms2] })).toBe(sha256(image));

      await shallowRekey(disk, { keys: { providers: [kms2] }, removeLockers: (l) => l.kind === 'passphrase' });
      await expect(openDisk(disk, { keys: { passphrase: 'recovery' } })).rejects.toMatchObject({ code: expect.stringMatching(/ERR_(NO_KEY|WRONG_KEY)/) });
      expect(dataHash()).toBe(h0);
      expect(leftovers(dir)).toEqual([]);
    });
  }

  it('a plain disk is refused', async () => {
    await expect(shallowRekey(plainRaw, { keys: { passphrase: 'x' }, addLockers: [phraseLocker('y')] })).rejects.toMatchObject({ code: 'ERR_NOT_ENCRYPTED' });
    expect(existsSync(plainRaw + '.lck')).toBe(false);
  });
});
