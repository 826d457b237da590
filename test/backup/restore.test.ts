// backup restore: a new disk with the point's ciphertext view and descriptor (same key), every
// chunk checked by hash first, holes left unallocated, nothing outside OUT written; and the end to
// end case of issue 11: an ext4 image made by mkfs.ext4 -d, encrypted, backed up (the repository
// holds none of its strings), restored, decrypted by the CLI, checked by e2fsck -fn.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup, BackupError } from '../../src/backup/index.js';
import { encryptDisk } from '../../src/pipeline/index.js';
import { openDisk as openPlainDisk } from '../../src/vmdk/index.js';
import { phraseLocker, patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { descriptorWithoutExtents, encryptedDisk, PASS, plainSha, qemuDataBytes, run, type Sub } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-restore-');
});
afterAll(() => tmp.cleanup());

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(BackupError);
    return (err as BackupError).code;
  }
  throw new Error('expected an error');
}

/** A disk's descriptor text as the VMDK layer reads it (the embedded one of a monolithicSparse disk). */
async function descriptorText(path: string): Promise<string> {
  const d = await openPlainDisk(path, { readOnly: true, allowEncrypted: true });
  try {
    return d.descriptor!.toString();
  } finally {
    await d.close();
  }
}

describe('backup restore', () => {
  it.each<Sub>(['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat'])(
    '%s: same ciphertext view, same descriptor, same plaintext, same allocation',
    async (sub) => {
      const dir = join(tmp.dir, sub);
      mkdirSync(dir);
      const disk = await encryptedDisk(dir, 'd', sub, 5 * MiB, [
        { at: 4096, data: patternBytes(200_000, 11) },
        { at: 3 * MiB + 65536 * 3, data: patternBytes(65536, 12) },
      ]);
      const repo = join(dir, 'repo');
      await initRepository(repo);
      const p = await createBackup(disk, repo, { name: 'n1' });
      mkdirSync(join(dir, 'out'));
      const out = join(dir, 'out', 'r.vmdk');
      const r = await restoreBackup(repo, 'n1', out);
      expect(r.point).toBe(p.point);
      execFileSync('qemu-img', ['compare', '-q', disk, out]);
      // The same lines, and the one naming the point OUT was restored from (its backups continue from it).
      const outText = await descriptorText(out);
      expect(outText).toMatch(new RegExp(String.raw`\nddb\.vmseal\.restoredFrom = "[0-9a-f]{32}:${p.point}:[0-9a-f]{12}"\r?\n`));
      expect(descriptorWithoutExtents(outText.replace(/ddb\.vmseal\.restoredFrom = .*\r?\n/, ''))).toBe(descriptorWithoutExtents(await descriptorText(disk)));
      expect(await plainSha(out)).toBe(await plainSha(disk));
      expect(await qemuDataBytes(out)).toBe(await qemuDataBytes(disk));
      // Nothing but OUT's own files in its folder: the staging folder is gone.
      expect(readdirSync(join(dir, 'out')).sort()).toEqual(r.files.map((f) => f.slice(join(dir, 'out').length + 1)).sort());
    },
  );

  it('twoGbMaxExtentSparse with two extents: data across the extent boundary, holes unallocated', async () => {
    const dir = join(tmp.dir, 'two-extents');
    mkdirSync(dir);
    const capacity = 3 * 1024 * MiB;
    const disk = await encryptedDisk(dir, 'd', 'twoGbMaxExtentSparse', capacity, [{ at: 2048 * MiB - 100_000, data: patternBytes(300_000, 13) }]);
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo);
    expect(p.chunks).toBeLessThanOrEqual(3); // the two chunks of the data (and unit 0's, which the data check reads)
    const out = join(dir, 'r.vmdk');
    const r = await restoreBackup(repo, p.point, out);
    expect(r.files.map((f) => f.slice(dir.length + 1))).toEqual(['r.vmdk', 'r-s001.vmdk', 'r-s002.vmdk']);
    execFileSync('qemu-img', ['compare', '-q', disk, out]);
    expect(await qemuDataBytes(out)).toBe(await qemuDataBytes(disk));
  });

  it('checks every chunk before writing it, refuses unsafe manifests and existing outputs, resolves points', async () => {
    const dir = join(tmp.dir, 'safety');
    mkdirSync(dir);
    const disk = await encryptedDisk(dir, 'd', 'monolithicFlat', 2 * MiB, [{ at: 0, data: patternBytes(4096, 14) }]);
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const first = await createBackup(disk, repo, { name: 'keep' });
    const second = await createBackup(disk, repo, { name: 'keep' });
    mkdirSync(join(dir, 'o'));
    // names and latest pick the newest point
    expect((await restoreBackup(repo, 'keep', join(dir, 'o', 'a.vmdk'))).point).toBe(second.point);
    expect((await restoreBackup(repo, 'latest', join(dir, 'o', 'b.vmdk'))).point).toBe(second.point);
    expect((await restoreBackup(repo, first.point, join(dir, 'o', 'c.vmdk'))).point).toBe(first.point);
    expect(await codeOf(restoreBackup(repo, 'nope', join(dir, 'o', 'x.vmdk')))).toBe('ERR_BACKUP_NO_POINT');
    expect(await codeOf(restoreBackup(repo, 'latest', join(dir, 'o', 'a.vmdk')))).toBe('ERR_OUTPUT_EXISTS');
    writeFileSync(join(dir, 'o', 'y-flat.vmdk'), 'someone else');
    await expect(restoreBackup(repo, 'latest', join(dir, 'o', 'y.vmdk'))).rejects.toThrow(/y-flat\.vmdk exists; restore never replaces a file/);
    expect(readFileSync(join(dir, 'o', 'y-flat.vmdk'), 'utf8')).toBe('someone else');

    // An altered chunk: refused before anything reaches OUT.
    const manifestFile = join(repo, 'points', `${second.point}.json`);
    const m = JSON.parse(readFileSync(manifestFile, 'utf8'));
    const [, hash] = m.layers[0].chunks[1];
    const chunkFile = join(repo, 'chunks', hash.slice(0, 2), hash);
    const good = readFileSync(chunkFile);
    const bad = Buffer.from(good);
    bad[100] ^= 1;
    writeFileSync(chunkFile, bad);
    await expect(restoreBackup(repo, second.point, join(dir, 'o', 'z.vmdk'))).rejects.toThrow(new RegExp(`chunk ${hash} does not hash to its name`));
    expect(readdirSync(join(dir, 'o')).filter((f) => f.startsWith('z') || f.startsWith('.vmseal-restore'))).toEqual([]);
    writeFileSync(chunkFile, good);

    // A manifest naming an extent outside the folder is refused (manifests are not authenticated).
    const evil = { ...m, layers: [{ ...m.layers[0], descriptor: m.layers[0].descriptor.replace(/"d-flat\.vmdk"/, '"../evil-flat.vmdk"') }] };
    expect(evil.layers[0].descriptor).toContain('../evil-flat.vmdk');
    writeFileSync(manifestFile, JSON.stringify(evil));
    await expect(restoreBackup(repo, second.point, join(dir, 'o', 'e.vmdk'))).rejects.toThrow(
      /names the extent file "\.\.\/evil-flat\.vmdk", which is not a bare file name/,
    );
    expect(await codeOf(restoreBackup(repo, second.point, join(dir, 'o', 'e.vmdk')))).toBe('ERR_BACKUP_MANIFEST');
    expect(existsSync(join(dir, 'evil-flat.vmdk'))).toBe(false);
  });
});

describe('end to end through the CLI: an ext4 disk', () => {
  it('backs up without a key, holds no guest string, restores a disk that decrypts and passes e2fsck -fn', async () => {
    const dir = join(tmp.dir, 'ext4');
    const files = join(dir, 'files');
    mkdirSync(files, { recursive: true });
    const secrets = ['guest-secret-alpha-7f3a9c', 'guest-secret-bravo-00d1e2', 'guest-secret-charlie-5b6c7d'];
    writeFileSync(join(files, 'notes.txt'), `${secrets[0]}\n`.repeat(5000));
    writeFileSync(join(files, 'config.ini'), `[main]\nkey=${secrets[1]}\n`);
    mkdirSync(join(files, 'sub'));
    writeFileSync(join(files, 'sub', 'data.bin'), Buffer.concat([patternBytes(3 * MiB, 15), Buffer.from(secrets[2])]));
    const image = join(dir, 'fs.img');
    execFileSync('truncate', ['-s', '48M', image]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', files, image]);
    const imageText = readFileSync(image);
    for (const s of secrets) expect(imageText.includes(s)).toBe(true);
    const disk = join(dir, 'fs-enc.vmdk');
    await encryptDisk(image, disk, { subformat: 'monolithicSparse', lockers: [phraseLocker(PASS)] });

    // No key anywhere in the environment of the backup commands.
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') });
    const repo = join(dir, 'repo');
    expect(json(await vmseal(['backup', 'init', repo, '--json'], env)).ok).toBe(true);
    const created = json(await vmseal(['backup', 'create', disk, repo, '--name', 'first', '--json'], env));
    expect(created).toMatchObject({ ok: true, command: 'backup create', plain: false, name: 'first' });
    const grep = (needle: string) => {
      try {
        return execFileSync('grep', ['-rlaF', needle, repo], { encoding: 'utf8' });
      } catch (err) {
        if ((err as { status?: number }).status === 1) return ''; // grep: no match
        throw err;
      }
    };
    for (const s of secrets) expect(grep(s), `repository holds ${s}`).toBe('');

    const list = json(await vmseal(['backup', 'list', repo, '--json'], env));
    expect(list.points).toHaveLength(1);
    expect(list.points[0]).toMatchObject({ id: created.point, name: 'first', subformat: 'monolithicSparse' });
    expect(json(await vmseal(['backup', 'verify', repo, '--json'], env))).toMatchObject({ ok: true, points: 1 });

    const out = join(dir, 'restored.vmdk');
    const restored = json(await vmseal(['backup', 'restore', repo, 'first', out, '--json'], env));
    expect(restored).toMatchObject({ ok: true, point: created.point, path: out });
    const dec = join(dir, 'dec.img');
    const d = await vmseal(['decrypt', out, dec, '--raw'], cleanEnv({ VMSEAL_HOME: join(dir, 'no-home'), VMSEAL_PASSPHRASE: PASS }));
    expect(d.code, d.stderr).toBe(0);
    expect(sha256(readFileSync(dec))).toBe(sha256(imageText));
    await run('e2fsck', ['-fn', dec]);
  });

  it('refuses a plain disk with exit code 5 and says to encrypt it first', async () => {
    const dir = join(tmp.dir, 'cli-plain');
    mkdirSync(dir);
    const raw = join(dir, 'p.raw');
    writeFileSync(raw, patternBytes(MiB, 16));
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const r = await vmseal(['backup', 'create', raw, repo], cleanEnv());
    expect(r.code).toBe(5);
    expect(r.stderr).toMatch(
      /^vmseal: cannot back up .*p\.raw: .* is not encrypted: .*Encrypt the disk first \(`vmseal encrypt`\), use a general backup tool, or add --allow-plain/,
    );
    const ok = json(await vmseal(['backup', 'create', raw, repo, '--allow-plain', '--json'], cleanEnv()));
    expect(ok).toMatchObject({ ok: true, plain: true, history: 'p.raw' });
    // A plain point restores as the raw image it was.
    const back = join(dir, 'back.raw');
    expect(json(await vmseal(['backup', 'restore', repo, 'latest', back, '--json'], cleanEnv()))).toMatchObject({ ok: true, path: back });
    expect(readFileSync(back)).toEqual(readFileSync(raw));
  });
});
