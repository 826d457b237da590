// backup rewrap --remove-locker (issue 11 §2, "What the repository reveals"): after a passphrase
// leak, every point's KeySafe (a chain point's layers included) is rewritten without the passphrase
// locker; a disk restored from a point then opens with the key provider and no longer with the
// passphrase. Removing a point's last locker is refused before any manifest changes.
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BackupError, rewrapBackup } from '../../src/backup/index.js';
import { createEncryptedSnapshot, openDisk } from '../../src/disk/index.js';
import { describeKeySafe } from '../../src/keys/index.js';
import { Descriptor } from '../../src/vmdk/index.js';
import { patternBytes, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal, type CliResult } from '../cli/run-cli.js';

const MiB = 1 << 20;
const PHRASE = 'leaked recovery passphrase';
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-rewrap-');
});
afterAll(() => tmp.cleanup());

function ok(r: CliResult): CliResult {
  expect(r.code, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r;
}

/** Every KeySafe of every manifest of the repository (merged layers and chain layers). */
function keySafes(repo: string): string[] {
  const out: string[] = [];
  for (const f of readdirSync(join(repo, 'points'))) {
    const m = JSON.parse(readFileSync(join(repo, 'points', f), 'utf8')) as {
      layers: Array<{ descriptor: string }>;
      chain?: { layers: Array<{ descriptor: string }> };
    };
    for (const l of [...m.layers, ...(m.chain?.layers ?? [])]) out.push(Descriptor.parse(l.descriptor).get('encryption.keySafe')!);
  }
  return out;
}

function manifests(repo: string): string {
  return readdirSync(join(repo, 'points'))
    .sort()
    .map((f) => readFileSync(join(repo, 'points', f), 'utf8'))
    .join('');
}

describe('backup rewrap --remove-locker', () => {
  it('removes the passphrase locker from every point: the restored disk opens with the provider, not the passphrase', async () => {
    const dir = tmp.dir;
    const home = join(dir, 'home');
    const pw = join(dir, 'pw.txt');
    writeFileSync(pw, `${PHRASE}\n`);
    const data = patternBytes(3 * MiB, 7);
    const raw = join(dir, 'src.raw');
    writeFileSync(raw, data);
    const env = cleanEnv({ VMSEAL_HOME: home });
    const disk = join(dir, 'disk.vmdk');
    ok(await vmseal(['encrypt', raw, disk, '--subformat', 'monolithicSparse', '--recovery-passphrase', '--passphrase-file', pw], env));
    const noKey = cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') });
    const repo = join(dir, 'repo');
    ok(await vmseal(['backup', 'init', repo], noKey));
    ok(await vmseal(['backup', 'create', disk, repo, '--name', 'one'], noKey));
    // A chain point too: its real layers' KeySafes are rewritten as well.
    const top = await createEncryptedSnapshot(disk, { keys: { passphrase: PHRASE } });
    const d = await openDisk(top, { keys: { passphrase: PHRASE } });
    await d.write(MiB, Buffer.alloc(4096, 0x77));
    await d.close();
    ok(await vmseal(['backup', 'create', top, repo, '--name', 'two'], noKey));
    for (const ks of keySafes(repo)) expect(describeKeySafe(ks).map((l) => l.kind)).toEqual(['provider', 'passphrase']);

    // Without a key: refused (the KeySafes are opened before they are rewritten), nothing changed.
    const before = manifests(repo);
    expect((await vmseal(['backup', 'rewrap', repo, '--remove-locker', 'passphrase'], noKey)).code).not.toBe(0);
    expect(manifests(repo)).toBe(before);

    const r = json(ok(await vmseal(['backup', 'rewrap', repo, '--remove-locker', 'passphrase', '--json'], env)));
    expect(r.rewrittenPoints).toHaveLength(2);
    for (const ks of keySafes(repo)) expect(describeKeySafe(ks).map((l) => l.kind)).toEqual(['provider']);
    ok(await vmseal(['backup', 'verify', repo], noKey));

    for (const point of ['one', 'two']) {
      const out = join(dir, `restored-${point}.vmdk`);
      ok(await vmseal(['backup', 'restore', repo, point, out], noKey));
      const byPhrase = await vmseal(
        ['decrypt', out, join(dir, `${point}-p.img`), '--raw'],
        cleanEnv({ VMSEAL_HOME: join(dir, 'empty'), VMSEAL_PASSPHRASE: PHRASE }),
      );
      expect(byPhrase.code).toBe(3);
      const dec = join(dir, `${point}.img`);
      ok(await vmseal(['decrypt', out, dec, '--raw'], env));
      const want = point === 'one' ? data : Buffer.concat([data.subarray(0, MiB), Buffer.alloc(4096, 0x77), data.subarray(MiB + 4096)]);
      expect(sha256(readFileSync(dec))).toBe(sha256(want));
    }

    // Removing the last locker is refused before any manifest is written; a second run changes nothing.
    const now = manifests(repo);
    const last = await vmseal(['backup', 'rewrap', repo, '--remove-locker', 'provider'], env);
    expect(last.code).toBe(2);
    expect(last.stderr).toContain('no way to open');
    await expect(rewrapBackup(repo, { removeLocker: 'provider', keys: {} })).rejects.toSatisfy(
      (e: unknown) => e instanceof BackupError && e.code === 'ERR_BACKUP_LAST_LOCKER',
    );
    expect(json(ok(await vmseal(['backup', 'rewrap', repo, '--remove-locker', 'passphrase', '--json'], env))).rewrittenPoints).toEqual([]);
    expect(manifests(repo)).toBe(now);
  });
});
