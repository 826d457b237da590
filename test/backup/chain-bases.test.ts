// Chain points beyond a sparse base (issue 11 leftovers): a chain over a monolithicFlat base and
// over a twoGbMaxExtentFlat base backs up and restores to the base's subformat with the chain's
// ciphertext view (by qemu-img) and plaintext; `restore --new-dek` of a chain point gives a disk under
// a new DEK whose plaintext is the chain's; and a chain's deep rekey keeps the base's ddb.uuid, so
// the chain's points after it continue the same history and `prune --before-rekey` takes the old
// DEK's points away.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, pruneBackup, restoreBackup, verifyBackup } from '../../src/backup/index.js';
import { createEncryptedSnapshot, openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { sameChain, type PointChain } from '../../src/backup/chain-point.js';
import { deepRekey } from '../../src/pipeline/index.js';
import { openDisk as openVmdk } from '../../src/vmdk/index.js';
import { phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { encryptedDisk, PASS, plainSha, qemuRaw, type Sub } from './helpers.js';

const KiB = 1024;
const MiB = 1 << 20;
const CAPACITY = 6 * MiB;
const KEYS = { passphrase: PASS };

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-chain-bases-');
});
afterAll(() => tmp.cleanup());

/** An encrypted base of `subformat` with data at 0 and 3M, and a child that overwrites part of it and writes beside it. */
async function chain(dir: string, subformat: Sub): Promise<{ base: string; top: string }> {
  mkdirSync(dir, { recursive: true });
  const base = await encryptedDisk(dir, 'vm', subformat, CAPACITY, [
    { at: 0, data: Buffer.alloc(2 * MiB, 0x11) },
    { at: 3 * MiB, data: Buffer.alloc(MiB, 0x12) },
  ]);
  const top = await createEncryptedSnapshot(base, { keys: KEYS });
  const d = await openDisk(top, { keys: KEYS });
  try {
    await d.write(MiB + 64 * KiB, Buffer.alloc(128 * KiB, 0x21));
    await d.write(5 * MiB, Buffer.alloc(64 * KiB, 0x22));
  } finally {
    await d.close();
  }
  return { base, top };
}

async function subformatOf(path: string): Promise<string> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true });
  try {
    return d.subformat;
  } finally {
    await d.close();
  }
}

async function uuidOf(path: string): Promise<string | undefined> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true, layerOnly: true });
  try {
    return d.descriptor?.get('ddb.uuid');
  } finally {
    await d.close();
  }
}

describe('chain points over flat bases', () => {
  for (const subformat of ['monolithicFlat', 'twoGbMaxExtentFlat'] as const) {
    it(`a chain over a ${subformat} base restores as a ${subformat} disk with the chain's ciphertext and plaintext`, async () => {
      const dir = join(tmp.dir, subformat);
      const { base, top } = await chain(dir, subformat);
      const repo = join(dir, 'repo');
      await initRepository(repo);
      const ofBase = await createBackup(base, repo);
      const p = await createBackup(top, repo);
      // The base's history goes on; the child's two changed chunks are the only new ones.
      expect(p.history).toBe(ofBase.history);
      expect(p.parent).toBe(ofBase.point);
      expect(p.newChunks).toBe(2);
      const out = join(dir, 'out.vmdk');
      await restoreBackup(repo, p.point, out);
      expect(await subformatOf(out)).toBe(subformat);
      expect(sha256(await qemuRaw(out, join(dir, 'out.raw')))).toBe(sha256(await qemuRaw(top, join(dir, 'top.raw'))));
      expect(await plainSha(out)).toBe(await plainSha(top));
    });
  }
});

describe('restore --new-dek of a chain point', () => {
  it('gives one disk under a new DEK (every data chunk differs) whose plaintext is the chain top', async () => {
    const dir = join(tmp.dir, 'new-dek');
    const { top } = await chain(dir, 'monolithicSparse');
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(top, repo);
    const out = join(dir, 'copy.vmdk');
    const r = await restoreBackup(repo, p.point, out, { newDek: true, keys: KEYS, rewrapTo: [phraseLocker('copy passphrase')] });
    expect(r.newDek).toBe(true);
    const before = (await readEncryptionParams(top))!;
    const after = (await readEncryptionParams(out))!;
    expect(after.diskId).not.toBe(before.diskId);
    expect(after.parentLayerId).toBeUndefined();
    const d = await openDisk(out, { keys: { passphrase: 'copy passphrase' }, readOnly: true });
    try {
      expect(sha256(await d.read(0, d.capacity))).toBe(await plainSha(top));
    } finally {
      await d.close();
    }
    // Ciphertext: no chunk of the chain's data is found again in the copy.
    const chainRaw = await qemuRaw(top, join(dir, 'top.raw'));
    const outRaw = await qemuRaw(out, join(dir, 'out.raw'));
    for (let at = 0; at < CAPACITY; at += MiB) {
      const c = chainRaw.subarray(at, at + MiB);
      if (c.every((b) => b === 0)) continue;
      expect(outRaw.subarray(at, at + MiB).equals(c), `chunk at ${at}`).toBe(false);
    }
  });
});

describe("a chain's deep rekey and its backup history", () => {
  it('keeps the base ddb.uuid: the next point continues the history, prune --before-rekey drops the old DEK', async () => {
    const dir = join(tmp.dir, 'deep');
    const { base, top } = await chain(dir, 'monolithicSparse');
    const repo = join(dir, 'repo');
    await initRepository(repo);
    const uuid = await uuidOf(base);
    const old = await createBackup(top, repo);
    expect(old.history).toBe(uuid);

    await deepRekey(top, { keys: KEYS, lockers: [phraseLocker('new passphrase')] });
    expect(await uuidOf(base)).toBe(uuid);
    const renewed = await createBackup(top, repo);
    expect(renewed.history).toBe(old.history);
    expect(renewed.parent).toBe(old.point);

    const pruned = await pruneBackup(repo, { beforeRekey: true });
    expect(pruned.removedPoints).toEqual([old.point]);
    expect((await verifyBackup(repo)).ok).toBe(true);
    const out = join(dir, 'out.vmdk');
    await restoreBackup(repo, renewed.point, out);
    const d = await openDisk(out, { keys: { passphrase: 'new passphrase' }, readOnly: true });
    try {
      const t = await openDisk(top, { keys: { passphrase: 'new passphrase' }, readOnly: true });
      try {
        expect(sha256(await d.read(0, d.capacity))).toBe(sha256(await t.read(0, t.capacity)));
      } finally {
        await t.close();
      }
    } finally {
      await d.close();
    }
  });
});

describe('which chain point a change bitmap may count from (sameChain)', () => {
  const layer = (path: string, cid: string) => ({
    path,
    subformat: 'monolithicSparse',
    descriptor: `# Disk DescriptorFile\nversion=1\nCID=${cid}\nparentCID=ffffffff\ncreateType="monolithicSparse"\nRW 2048 SPARSE "x.vmdk"\n`,
  });
  const chainOf = (...layers: Array<ReturnType<typeof layer>>): PointChain => ({ layers, backedUp: layers.length - 1 });
  it('the same layers, the ones below the top unchanged; a single disk only with a single disk', () => {
    const then = chainOf(layer('/d/b.vmdk', 'aa'), layer('/d/t.vmdk', '11'));
    expect(sameChain(undefined, undefined)).toBe(true);
    expect(sameChain(then, undefined)).toBe(false);
    expect(sameChain(undefined, then)).toBe(false);
    // The top's CID changes with its writes: that is what the bitmap counts.
    expect(sameChain(then, chainOf(layer('/d/b.vmdk', 'AA'), layer('/d/t.vmdk', '22')))).toBe(true);
    expect(sameChain(then, chainOf(layer('/d/b.vmdk', 'ab'), layer('/d/t.vmdk', '11')))).toBe(false);
    expect(sameChain(then, chainOf(layer('/d/c.vmdk', 'aa'), layer('/d/t.vmdk', '11')))).toBe(false);
    expect(sameChain(then, chainOf(layer('/d/b.vmdk', 'aa'), layer('/d/t.vmdk', '11'), layer('/d/u.vmdk', '33')))).toBe(false);
  });
});
