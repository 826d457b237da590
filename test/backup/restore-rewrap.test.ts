// backup restore at another site: --rewrap-to seals the point's DEK for the destination's key
// provider (local → KMIP with a real PyKMIP server, KMIP → local, and from a recovery passphrase),
// data untouched; --new-dek re-encrypts every chunk. Each restored disk decrypts to the ext4 image
// the point was taken of (hash, e2fsck -fn), and no longer opens with the source's provider alone.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup, BackupError } from '../../src/backup/index.js';
import { encryptDisk } from '../../src/pipeline/index.js';
import { phraseLocker, patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, expectOneLineError, json, vmseal } from '../cli/run-cli.js';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { PASS, qemuRaw, run } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let kms: PyKmip;
let kmsEnv: Record<string, string>;
let image: string;
let imageSha: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-backup-rewrap-');
  kms = await startPyKmip({ nodes: 1 });
  kmsEnv = {
    VMSEAL_KMS: kms.endpoints.map((e) => `${e.host}:${e.port}`).join(','),
    VMSEAL_KMS_CA: kms.caPath,
    VMSEAL_KMS_CERT: kms.clientCertPath,
    VMSEAL_KMS_KEY: kms.clientKeyPath,
  };
  // An ext4 file system of known content, in an image qemu-img made.
  const files = join(tmp.dir, 'files');
  mkdirSync(join(files, 'sub'), { recursive: true });
  writeFileSync(join(files, 'notes.txt'), 'restore-at-another-site\n'.repeat(4000));
  writeFileSync(join(files, 'sub', 'data.bin'), patternBytes(3 * MiB, 41));
  image = join(tmp.dir, 'fs.img');
  execFileSync('qemu-img', ['create', '-q', '-f', 'raw', image, '32M']);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', files, image]);
  imageSha = sha256(readFileSync(image));
}, 60_000);
afterAll(async () => {
  await kms?.stop();
  tmp?.cleanup();
});

function ok(r: Awaited<ReturnType<typeof vmseal>>): Awaited<ReturnType<typeof vmseal>> {
  expect(r.code, r.stderr).toBe(0);
  return r;
}

/** Decrypt `disk` with `env` to a raw image; check its hash and its file system. */
async function decryptsToImage(disk: string, env: NodeJS.ProcessEnv): Promise<void> {
  const dec = `${disk}.dec.img`;
  ok(await vmseal(['decrypt', disk, dec, '--raw'], env));
  expect(sha256(readFileSync(dec))).toBe(imageSha);
  await run('e2fsck', ['-fn', dec]);
}

/** The ciphertext chunks of a disk's virtual view, per 1 MiB offset (qemu-img, no key). */
async function viewChunks(disk: string): Promise<Buffer[]> {
  const raw = await qemuRaw(disk, `${disk}.view.raw`);
  const out: Buffer[] = [];
  for (let off = 0; off < raw.length; off += MiB) out.push(raw.subarray(off, off + MiB));
  return out;
}

describe('backup restore --rewrap-to', () => {
  it('local → KMIP: same ciphertext, the DEK sealed on the KMS; the source keystore alone no longer opens it', async () => {
    const dir = join(tmp.dir, 'local-kmip');
    mkdirSync(dir);
    const homeA = join(dir, 'site-a-home');
    const siteA = cleanEnv({ VMSEAL_HOME: homeA });
    const disk = join(dir, 'enc.vmdk');
    ok(await vmseal(['encrypt', image, disk, '--subformat', 'monolithicSparse'], siteA));
    const repo = join(dir, 'repo');
    const noKey = cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') });
    ok(await vmseal(['backup', 'init', repo], noKey));
    const point = json(ok(await vmseal(['backup', 'create', disk, repo, '--json'], noKey))).point as string;

    // Site B reaches site A's keystore (a copy, or the same provider) and its own KMS.
    const out = join(dir, 'site-b.vmdk');
    const r = json(ok(await vmseal(['backup', 'restore', repo, point, out, '--rewrap-to', 'kmip', '--json'], cleanEnv({ VMSEAL_HOME: homeA, ...kmsEnv }))));
    expect(r).toMatchObject({ ok: true, point, path: out, rewrapped: true, newDek: false });
    // Data untouched: the restored disk's ciphertext view is the point's.
    execFileSync('qemu-img', ['compare', '-q', disk, out]);
    const info = json(ok(await vmseal(['info', out, '--json'], cleanEnv({ VMSEAL_HOME: join(dir, 'empty'), ...kmsEnv }))));
    expect(info.encryption.lockers.map((l: { kind: string; providerId?: string }) => `${l.kind}:${l.providerId}`)).toEqual(['provider:kmip']);

    await decryptsToImage(out, cleanEnv({ VMSEAL_HOME: join(dir, 'empty'), ...kmsEnv }));
    const refused = await vmseal(['decrypt', out, join(dir, 'x.img'), '--raw'], siteA);
    expect(refused.code).toBe(3);
    expectOneLineError(refused);
  });

  it('KMIP → local: the restored disk opens with the destination keystore alone, not with the KMS', async () => {
    const dir = join(tmp.dir, 'kmip-local');
    mkdirSync(dir);
    const siteA = cleanEnv({ VMSEAL_HOME: join(dir, 'a-home'), ...kmsEnv });
    const disk = join(dir, 'enc.vmdk');
    ok(await vmseal(['encrypt', image, disk, '--subformat', 'monolithicFlat', '--key-provider', 'kmip'], siteA));
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const point = (await createBackup(disk, repo, { name: 'before-move' })).point;

    const homeB = join(dir, 'b-home');
    const out = join(dir, 'site-b.vmdk');
    const r = json(
      ok(await vmseal(['backup', 'restore', repo, 'before-move', out, '--rewrap-to', 'local', '--json'], cleanEnv({ VMSEAL_HOME: homeB, ...kmsEnv }))),
    );
    expect(r).toMatchObject({ point, rewrapped: true });
    execFileSync('qemu-img', ['compare', '-q', disk, out]);
    await decryptsToImage(out, cleanEnv({ VMSEAL_HOME: homeB }));
    const refused = await vmseal(['decrypt', out, join(dir, 'x.img'), '--raw'], cleanEnv({ VMSEAL_HOME: join(dir, 'empty'), ...kmsEnv }));
    expect(refused.code).toBe(3);
  });

  it('a recovery passphrase unlocks the point where its provider is gone (library)', async () => {
    const dir = join(tmp.dir, 'phrase');
    mkdirSync(dir);
    const disk = join(dir, 'enc.vmdk');
    await encryptDisk(image, disk, { subformat: 'monolithicSparse', lockers: [phraseLocker(PASS)] });
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const point = (await createBackup(disk, repo)).point;
    const out = join(dir, 'r.vmdk');
    const NEW = 'the-destination-passphrase';
    await restoreBackup(repo, point, out, { keys: { passphrase: PASS }, rewrapTo: [phraseLocker(NEW)] });
    execFileSync('qemu-img', ['compare', '-q', disk, out]);
    await decryptsToImage(out, cleanEnv({ VMSEAL_HOME: join(dir, 'empty'), VMSEAL_PASSPHRASE: NEW }));
    expect((await vmseal(['decrypt', out, join(dir, 'x.img'), '--raw'], cleanEnv({ VMSEAL_HOME: join(dir, 'e'), VMSEAL_PASSPHRASE: PASS }))).code).toBe(3);

    // Refusals: no keys; a new DEK with no provider to seal it for; a wrong key (nothing is left behind).
    await expect(restoreBackup(repo, point, join(dir, 'p.vmdk'), { keys: { passphrase: PASS }, newDek: true })).rejects.toThrow(
      /is locked by a passphrase only, so a new DEK has no key provider to be sealed for: give its lockers with rewrapTo/,
    );
    await expect(restoreBackup(repo, point, join(dir, 'n.vmdk'), { rewrapTo: [phraseLocker(NEW)] })).rejects.toMatchObject({
      code: 'ERR_INVALID_ARGUMENT',
    });
    await expect(
      restoreBackup(repo, point, join(dir, 'w.vmdk'), { keys: { passphrase: 'wrong-passphrase' }, rewrapTo: [phraseLocker(NEW)] }),
    ).rejects.toMatchObject({
      code: 'ERR_WRONG_KEY',
    });
    expect(
      execFileSync('ls', ['-A', dir], { encoding: 'utf8' })
        .split('\n')
        .filter((f) => f.startsWith('w') || f.startsWith('.vmseal')),
    ).toEqual([]);
  });
});

describe('backup restore --new-dek', () => {
  it('re-encrypts every chunk under a new DEK; the plaintext is the point’s', async () => {
    const dir = join(tmp.dir, 'new-dek');
    mkdirSync(dir);
    const home = join(dir, 'home');
    const env = cleanEnv({ VMSEAL_HOME: home });
    const disk = join(dir, 'enc.vmdk');
    ok(await vmseal(['encrypt', image, disk, '--subformat', 'monolithicSparse'], env));
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo);
    const out = join(dir, 'fresh.vmdk');
    const r = json(ok(await vmseal(['backup', 'restore', repo, p.point, out, '--new-dek', '--json'], env)));
    expect(r).toMatchObject({ ok: true, newDek: true, rewrapped: false });
    await decryptsToImage(out, env);
    const before = json(ok(await vmseal(['info', disk, '--json'], env)));
    const after = json(ok(await vmseal(['info', out, '--json'], env)));
    expect(after.encryption.diskId).not.toBe(before.encryption.diskId);
    expect(after.encryption.lockers[0].keyId).not.toBe(before.encryption.lockers[0].keyId);
    // Every chunk the point lists differs in the restored disk.
    const a = await viewChunks(disk);
    const b = await viewChunks(out);
    const m = JSON.parse(readFileSync(join(repo, 'points', `${p.point}.json`), 'utf8')) as { layers: Array<{ chunks: Array<[number, string]> }> };
    expect(m.layers[0]!.chunks.length).toBeGreaterThan(3);
    for (const [off] of m.layers[0]!.chunks) expect(b[off / MiB]!.equals(a[off / MiB]!), `chunk at ${off}`).toBe(false);
    // The source disk still opens with its key: its KEK was not retired.
    await decryptsToImage(disk, env);
    // A backup of the re-encrypted disk stores every chunk anew.
    const again = await createBackup(out, repo);
    expect(again.newChunks).toBe(again.chunks);
  });

  it('a plain point is refused (nothing to rewrap)', async () => {
    const dir = join(tmp.dir, 'plain');
    mkdirSync(dir);
    const raw = join(dir, 'p.raw');
    writeFileSync(raw, patternBytes(MiB, 42));
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(raw, repo, { allowPlain: true });
    const err = await restoreBackup(repo, p.point, join(dir, 'o.raw'), { newDek: true, keys: {} }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackupError);
    expect((err as BackupError).code).toBe('ERR_BACKUP_PLAIN');
  });
});
