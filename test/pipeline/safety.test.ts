import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { encryptDisk, decryptDisk, convertDisk, inspectDisk, verifyDisk, type Progress } from '../../src/pipeline/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { ensureSpace } from '../../src/pipeline/space.js';
import { MemoryKeyProvider, patternBytes, phraseLocker, providerLocker, sha256, tempDir } from '../disk/helpers.js';
import { contentHashOf } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let plainRaw: string;
let image: Buffer;

beforeAll(() => {
  tmp = tempDir('vmseal-safety-');
  image = Buffer.alloc(8 * MiB);
  patternBytes(3 * MiB, 31).copy(image, 0);
  patternBytes(MiB, 32).copy(image, 6 * MiB);
  plainRaw = join(tmp.dir, 'plain.raw');
  writeFileSync(plainRaw, image);
});
afterAll(() => tmp.cleanup());

describe('cancellation', () => {
  it('an AbortSignal stops a job with ERR_ABORTED and leaves nothing behind', async () => {
    const dir = join(tmp.dir, 'abort');
    mkdirSync(dir);
    const out = join(dir, 'out.vmdk');
    const ac = new AbortController();
    let events = 0;
    const job = encryptDisk(plainRaw, out, {
      subformat: 'monolithicFlat',
      lockers: [phraseLocker('pw')],
      chunkSize: 64 * 1024,
      depth: 1,
      onProgress: () => {
        if (++events === 1) ac.abort();
      },
      signal: ac.signal,
    });
    // The first progress event may come only after 100 ms: abort on a timer too.
    setTimeout(() => ac.abort(), 20);
    await expect(job).rejects.toMatchObject({ code: 'ERR_ABORTED', name: 'AbortError' });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('an already aborted signal starts nothing', async () => {
    const ac = new AbortController();
    ac.abort();
    const out = join(tmp.dir, 'never.vmdk');
    await expect(encryptDisk(plainRaw, out, { lockers: [phraseLocker('pw')], signal: ac.signal })).rejects.toMatchObject({
      code: 'ERR_ABORTED',
      name: 'AbortError',
    });
    expect(existsSync(out)).toBe(false);
  });
});

describe('progress', () => {
  it('reports bytes done up to the total, with a rate and an ETA', async () => {
    const events: Progress[] = [];
    await encryptDisk(plainRaw, join(tmp.dir, 'progress.vmdk'), {
      subformat: 'monolithicSparse',
      lockers: [phraseLocker('pw')],
      chunkSize: 256 * 1024,
      onProgress: (p) => events.push(p),
    });
    expect(events.length).toBeGreaterThan(0);
    const last = events[events.length - 1];
    expect(last).toMatchObject({ operation: 'encrypt', phase: 'copy', etaSeconds: 0 });
    expect(last.bytesDone).toBe(last.bytesTotal);
    expect(last.bytesTotal).toBe(8 * MiB); // a raw input is data-backed everywhere
    for (let i = 1; i < events.length; i++) expect(events[i].bytesDone).toBeGreaterThanOrEqual(events[i - 1].bytesDone);
    expect(last.rate).toBeGreaterThan(0);
  });
});

describe('locks', () => {
  it('a disk locked by a live holder is refused; an old .lck file or a record naming a dead pid is not a lock', async () => {
    const disk = join(tmp.dir, 'locked.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    const held = await acquireLock(disk, 'test');
    await expect(decryptDisk(disk, join(tmp.dir, 'locked.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw' })).rejects.toMatchObject({
      code: 'ERR_DISK_BUSY',
      message: expect.stringContaining(`pid ${process.pid}`),
    });
    await held.release();
    expect(existsSync(disk + '.vmseal-lock')).toBe(false);
    // Files left by a process that no longer exists decide nothing.
    const dead = spawn(process.execPath, ['-e', '0']);
    await new Promise((r) => dead.on('exit', r));
    const record = JSON.stringify({ pid: dead.pid, host: hostname(), operation: 'encrypt', started: new Date().toISOString(), tool: 'vmseal' });
    writeFileSync(disk + '.lck', record);
    writeFileSync(disk + '.vmseal-lock', record);
    await decryptDisk(disk, join(tmp.dir, 'locked.raw'), { keys: { passphrase: 'pw' }, subformat: 'raw' });
    expect(sha256(readFileSync(join(tmp.dir, 'locked.raw')))).toBe(sha256(image));
    expect(existsSync(disk + '.vmseal-lock')).toBe(false);
  });

  it('a VMware lock folder is honoured', async () => {
    const disk = join(tmp.dir, 'vmware.vmdk');
    await convertDisk(plainRaw, disk, { subformat: 'monolithicSparse' });
    mkdirSync(disk + '.lck');
    await expect(encryptDisk(disk, join(tmp.dir, 'vmware-enc.vmdk'), { lockers: [phraseLocker('pw')] })).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
  });
});

describe('atomic output', () => {
  it('a job killed half way leaves nothing under the final name; the next run cleans its staging folder', async () => {
    const dir = join(tmp.dir, 'killed');
    mkdirSync(dir);
    const out = join(dir, 'out.vmdk');
    // A crash is simulated by a copy of a live job's staging folder owned by a pid that does not exist.
    const ac = new AbortController();
    const started = encryptDisk(plainRaw, out, {
      subformat: 'twoGbMaxExtentFlat',
      lockers: [phraseLocker('pw')],
      chunkSize: 64 * 1024,
      depth: 1,
      signal: ac.signal,
    });
    // Wait until the staging folder exists, then simulate a crash: copy it under a dead pid's name.
    let stage: string | undefined;
    for (let i = 0; i < 200 && !stage; i++) {
      await new Promise((r) => setTimeout(r, 5));
      stage = readdirSync(dir).find((f) => f.includes('vmseal-tmp'));
    }
    expect(stage).toBeDefined();
    execFileSync('cp', ['-r', join(dir, stage!), join(dir, '.out.vmdk.vmseal-tmp-999999-deadbeef')]);
    writeFileSync(join(dir, '.out.vmdk.vmseal-tmp-999999-deadbeef', 'owner.json'), JSON.stringify({ pid: 999999, host: hostname() }));
    ac.abort();
    await expect(started).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir)).toEqual(['.out.vmdk.vmseal-tmp-999999-deadbeef']);
    await encryptDisk(plainRaw, out, { subformat: 'twoGbMaxExtentFlat', lockers: [phraseLocker('pw')] });
    expect(readdirSync(dir).sort()).toEqual(['out-f001.vmdk', 'out.vmdk']);
  });

  it('refuses when the file system cannot hold the output', async () => {
    await expect(ensureSpace(tmp.dir, 2 ** 53, 'a huge output')).rejects.toMatchObject({ code: 'ERR_NO_SPACE' });
  });
});

describe('inspect and verify', () => {
  it('inspect: sizes agree with qemu-img; lockers listed; unlockable with the right keys only', async () => {
    const kms = new MemoryKeyProvider();
    const disk = join(tmp.dir, 'info.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicSparse', unitSize: 4096, lockers: [providerLocker(kms), phraseLocker('recovery')] });
    const q = JSON.parse(execFileSync('qemu-img', ['info', '--output=json', disk], { encoding: 'utf8' }));
    const info = await inspectDisk(disk, { keys: { providers: [kms] } });
    expect(info).toMatchObject({ format: 'vmdk', subformat: 'monolithicSparse', virtualSize: q['virtual-size'], diskSize: q['actual-size'], encrypted: true });
    expect(info.allocatedSize).toBe(4 * MiB);
    expect(info.encryption).toMatchObject({ cipher: 'aes-256-xts', unitSize: 4096, unlockable: true });
    expect(info.encryption!.lockers.map((l) => l.kind)).toEqual(['provider', 'passphrase']);
    expect(info.encryption!.lockers[0].providerId).toBe('memkms');
    expect((await inspectDisk(disk)).encryption!.unlockable).toBeNull();
    const wrong = await inspectDisk(disk, { keys: { passphrase: 'nope' } });
    expect(wrong.encryption).toMatchObject({ unlockable: false, unlockError: { code: 'ERR_WRONG_KEY' } });
    const plain = await inspectDisk(plainRaw);
    expect(plain).toMatchObject({ format: 'raw', encrypted: false, virtualSize: 8 * MiB });
  });

  it('verify: sha256 is the plaintext sha256; contentHash depends on content only; comparison finds the first difference', async () => {
    const disk = join(tmp.dir, 'verify.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    const v = await verifyDisk(disk, { keys: { passphrase: 'pw' }, against: plainRaw, sha256: true });
    expect(v).toMatchObject({ ok: true, encrypted: true, sha256: sha256(image), againstSha256: sha256(image), problems: [] });
    expect(v.contentHash).toBe(contentHashOf(image));
    expect(v.againstContentHash).toBe(v.contentHash);
    const quick = await verifyDisk(disk, { keys: { passphrase: 'pw' } });
    expect(quick.sha256).toBeUndefined();
    expect(quick.contentHash).toBe(contentHashOf(image));
    expect(quick.bytesRead).toBe(4 * MiB);
    await expect(verifyDisk(disk, { keys: { passphrase: 'pw' }, sha256: 'yes' as unknown as boolean })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const other = Buffer.from(image);
    other[5 * MiB + 3] ^= 1;
    const otherRaw = join(tmp.dir, 'other.raw');
    writeFileSync(otherRaw, other);
    const bad = await verifyDisk(disk, { keys: { passphrase: 'pw' }, against: otherRaw });
    expect(bad).toMatchObject({ ok: false, firstMismatch: 5 * MiB + 3 });
    await expect(verifyDisk(disk)).rejects.toMatchObject({ code: 'ERR_DISK_ENCRYPTED' });
  });
});
