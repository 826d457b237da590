// Backups of snapshot chains (issue 11 §2): a point of a chain layer stores the chain's merged
// ciphertext view without a key, records every layer in `chain`, continues the base's history
// (only the chunks the child changed are new), and restores as a single flattened base disk that
// opens with the same keys (and with new ones after --rewrap-to). A rollback onto a chain layer is
// refused; a chain whose layers do not belong together is refused when backed up.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup, restoreBackupOver, verifyBackup, BackupError } from '../../src/backup/index.js';
import { createEncryptedSnapshot, openDisk } from '../../src/disk/index.js';
import { commitSnapshot, encryptDisk } from '../../src/pipeline/index.js';
import { Descriptor, openDisk as openPlainDisk, type VirtualDisk } from '../../src/vmdk/index.js';
import { chainRecord } from '../../src/backup/chain-point.js';
import { readPoint } from '../../src/backup/points.js';
import { openRepository } from '../../src/backup/repository.js';
import { phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { PASS, run } from './helpers.js';

const MiB = 1 << 20;

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-chain-');
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

const qemuIo = (path: string, ...cmds: string[]): void => {
  execFileSync('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), path]);
};

describe('backup of a plain chain made by qemu-img (--allow-plain)', () => {
  it('stores the merged view of the layer given, records the chain, restores it flattened', async () => {
    const dir = join(tmp.dir, 'plain');
    mkdirSync(dir);
    const [base, top] = ['base.vmdk', 'top.vmdk'].map((f) => join(dir, f));
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', base, '6M']);
    qemuIo(base, 'write -P 0x11 0 3M');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', top], { cwd: dir });
    qemuIo(top, 'write -P 0x22 1M 64k', 'write -P 0x33 5M 4k');
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const ofBase = await createBackup(base, repo, { allowPlain: true });
    const p = await createBackup(top, repo, { allowPlain: true });
    // The chain's points continue the base's history; only the chunks the child changed are new.
    expect(p.history).toBe(ofBase.history);
    expect(p.parent).toBe(ofBase.point);
    expect(p.newChunks).toBe(2);
    const m = await readPoint(await openRepository(repo), p.point);
    expect(m.layers).toHaveLength(1);
    expect(m.chain?.layers.map((l) => l.path)).toEqual([base, top]);
    expect(m.chain?.backedUp).toBe(1);
    expect(Descriptor.parse(m.chain!.layers[1]!.descriptor).get('parentFileNameHint')).toBe('base.vmdk');
    const out = join(dir, 'out.vmdk');
    await restoreBackup(repo, p.point, out);
    execFileSync('qemu-img', ['compare', '-q', top, out]);
    expect(execFileSync('qemu-img', ['info', out], { encoding: 'utf8' })).not.toContain('backing file');
    // A damaged chain record is a damaged manifest.
    const file = join(repo, 'points', `${p.point}.json`);
    const text = readFileSync(file, 'utf8');
    writeFileSync(file, text.replace('"backedUp":1', '"backedUp":0'));
    const v = await verifyBackup(repo);
    expect(v.ok).toBe(false);
    expect(v.problems[0]!.problem).toContain('chain.backedUp');
    writeFileSync(file, text);
    expect((await verifyBackup(repo)).ok).toBe(true);
  });
});

describe('backup of an encrypted chain (ext4)', () => {
  it('backs up the top without a key; the restored single disk decrypts to the chain top, passes e2fsck -fn, and rewraps', async () => {
    const dir = join(tmp.dir, 'ext4');
    const files = join(dir, 'files');
    mkdirSync(files, { recursive: true });
    writeFileSync(join(files, 'a.txt'), 'chain-guest-alpha\n'.repeat(4000));
    const image = join(dir, 'fs.img');
    execFileSync('truncate', ['-s', '24M', image]);
    execFileSync('mkfs.ext4', ['-q', '-F', '-d', files, image]);
    // The snapshot's changes: a new file written into a copy of the file system by debugfs.
    const changed = join(dir, 'fs2.img');
    copyFileSync(image, changed);
    const extra = join(dir, 'b.txt');
    writeFileSync(extra, 'chain-guest-bravo\n'.repeat(30000));
    execFileSync('debugfs', ['-w', '-R', `write ${extra} b.txt`, changed], { stdio: 'ignore' });
    const before = readFileSync(image);
    const after = readFileSync(changed);
    expect(sha256(before)).not.toBe(sha256(after));

    const base = join(dir, 'disk.vmdk');
    await encryptDisk(image, base, { subformat: 'monolithicSparse', lockers: [phraseLocker(PASS)] });
    const top = await createEncryptedSnapshot(base, { keys: { passphrase: PASS } });
    const d = await openDisk(top, { keys: { passphrase: PASS } });
    try {
      for (let off = 0; off < after.length; off += 4096) {
        const block = after.subarray(off, off + 4096);
        if (!block.equals(before.subarray(off, off + 4096))) await d.write(off, block);
      }
    } finally {
      await d.close();
    }

    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') });
    const keyEnv = cleanEnv({ VMSEAL_HOME: join(dir, 'no-home'), VMSEAL_PASSPHRASE: PASS });
    const repo = join(dir, 'repo');
    expect(json(await vmseal(['backup', 'init', repo, '--json'], env)).ok).toBe(true);
    const ofBase = json(await vmseal(['backup', 'create', base, repo, '--json'], env));
    const created = json(await vmseal(['backup', 'create', top, repo, '--name', 'snap', '--json'], env));
    expect(created).toMatchObject({ ok: true, plain: false, history: ofBase.history, parent: ofBase.point });
    expect(created.newChunks).toBeLessThan(created.chunks);
    const listed = json(await vmseal(['backup', 'list', repo, '--json'], env)).points as Array<{ id: string; chainLayers: number }>;
    expect(listed.map((p) => p.chainLayers)).toEqual([0, 2]);

    const topDec = join(dir, 'top.img');
    expect((await vmseal(['decrypt', top, topDec, '--raw'], keyEnv)).code).toBe(0);
    expect(sha256(readFileSync(topDec))).toBe(sha256(after));

    const out = join(dir, 'restored.vmdk');
    const restored = await vmseal(['backup', 'restore', repo, 'snap', out, '--json'], env);
    expect(restored.code, restored.stderr).toBe(0);
    const dec = join(dir, 'dec.img');
    const r = await vmseal(['decrypt', out, dec, '--raw'], keyEnv);
    expect(r.code, r.stderr).toBe(0);
    expect(sha256(readFileSync(dec))).toBe(sha256(readFileSync(topDec)));
    await run('e2fsck', ['-fn', dec]);
    // A base: no parent link, no parent layer id; same disk id as the chain.
    const layers = await layersOf(top);
    const o = await openPlainDisk(out, { readOnly: true, allowEncrypted: true });
    try {
      expect(o.descriptor!.get('parentCID')).toBe('ffffffff');
      expect(o.descriptor!.has('encryption.parentLayerId')).toBe(false);
      expect(o.descriptor!.get('encryption.diskId')).toBe(layers[0]!.descriptor!.get('encryption.diskId'));
      expect(o.descriptor!.get('encryption.layerId')).toBe(layers[0]!.descriptor!.get('encryption.layerId'));
    } finally {
      await o.close();
    }

    // --rewrap-to on a chain point: the flattened disk is rekeyed like any restored disk.
    const other = join(dir, 'other.vmdk');
    await restoreBackup(repo, 'snap', other, { keys: { passphrase: PASS }, rewrapTo: [phraseLocker('another passphrase')] });
    const od = await openDisk(other, { keys: { passphrase: 'another passphrase' }, readOnly: true });
    try {
      expect(sha256(await od.read(0, od.capacity))).toBe(sha256(after));
    } finally {
      await od.close();
    }

    // A rollback onto a chain layer is refused: commit first.
    expect(await codeOf(restoreBackupOver(repo, 'snap', top))).toBe('ERR_BACKUP_UNSUPPORTED');
    const over = await vmseal(['backup', 'restore', repo, 'snap', '--over', top], env);
    expect(over.code).toBe(5);
    expect(over.stderr).toContain('snapshot commit');

    // Once the chain is committed, the chain point rolls its base back (the single disk it was taken of).
    await commitSnapshot(top, { keys: { passphrase: PASS } });
    const b = await openDisk(base, { keys: { passphrase: PASS } });
    try {
      await b.write(20 * MiB, Buffer.alloc(65536, 0x99));
    } finally {
      await b.close();
    }
    const rolled = await restoreBackupOver(repo, 'snap', base);
    expect(rolled.chunksWritten).toBe(1);
    const rb = await openDisk(base, { keys: { passphrase: PASS }, readOnly: true });
    try {
      expect(sha256(await rb.read(0, rb.capacity))).toBe(sha256(after));
    } finally {
      await rb.close();
    }

    // Layers that do not belong together (another parent layer id) are refused.
    const bad = layers.map((l) => ({ path: l.path, subformat: l.subformat, descriptor: l.descriptor!.clone() }));
    bad[1]!.descriptor.set('encryption.parentLayerId', '0'.repeat(32));
    expect(() => chainRecord(bad as unknown as VirtualDisk[])).toThrow(expect.objectContaining({ code: 'ERR_WRONG_PARENT' }) as Error);
  });
});

/** The layers of a chain, base first (their descriptors, read without a key). */
async function layersOf(top: string): Promise<Array<{ path: string; subformat: string; descriptor: Descriptor | undefined }>> {
  const d = await openPlainDisk(top, { readOnly: true, allowEncrypted: true });
  try {
    const ls = (d as unknown as { layers(): VirtualDisk[] }).layers().reverse();
    return ls.map((l) => ({ path: l.path, subformat: l.subformat, descriptor: l.descriptor }));
  } finally {
    await d.close();
  }
}
