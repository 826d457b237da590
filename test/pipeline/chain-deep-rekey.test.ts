// Deep rekey of a snapshot chain: given any layer, every layer (base … top) is re-encrypted under one
// new DEK as one job; each layer keeps its plaintext and its structure (the grains it holds), the
// chain stays one qemu-img opens, and the old key opens nothing any more.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { deepRekey, resumeDisk, verifyDisk } from '../../src/pipeline/index.js';
import { createEncryptedSnapshot, openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { describeKeySafe, LocalKeyProvider } from '../../src/keys/index.js';
import { openDisk as openVmdk, ownRanges } from '../../src/vmdk/index.js';
import { qemuChain } from './chain-scenarios.js';
import { phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-chain-deep-');
});
afterAll(() => tmp.cleanup());

async function plainOf(path: string, keys: object): Promise<string> {
  const d = await openDisk(path, { readOnly: true, keys });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

async function structureOf(path: string): Promise<string> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true, layerOnly: true });
  try {
    const out: string[] = [];
    for await (const r of ownRanges(d)) out.push(`${r.offset}+${r.length}`);
    return out.join(',');
  } finally {
    await d.close();
  }
}

async function storedGrain(path: string, offset: number): Promise<string> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true, layerOnly: true });
  try {
    return sha256(await d.read(offset, 65536));
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

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: { code?: string }) => e.code,
  );
}

function leftovers(dir: string): string[] {
  return readdirSync(dir).filter((f) => /vmseal-chain|journal|vmseal-tmp/.test(f));
}

describe('deep rekey of a snapshot chain', () => {
  it('from the top: every layer under one new DEK, same plaintext and structure, qemu-img and verify agree', async () => {
    const dir = join(tmp.dir, 'top');
    const layers = await qemuChain(dir, [phraseLocker('old')], { passphrase: 'old' });
    const old = { passphrase: 'old' };
    const plain = await Promise.all(layers.map((l) => plainOf(l, old)));
    const shape = await Promise.all(layers.map((l) => structureOf(l)));
    // A grain each layer holds itself: its stored ciphertext must change.
    const held = [0, 2 << 20, 1 << 20];
    const stored = await Promise.all(layers.map((l, i) => storedGrain(l, held[i]!)));
    const before = await Promise.all(layers.map((l) => readEncryptionParams(l)));
    const uuids = await Promise.all(layers.map((l) => uuidOf(l)));
    expect(uuids.every((u) => /^[0-9a-f]{2}( [0-9a-f]{2}|-[0-9a-f]{2}){15}$/i.test(u ?? ''))).toBe(true);
    // The middle layer zeroed part of the base's data at 6M: the chain reads zeros there.
    const mid = await openDisk(layers[1]!, { readOnly: true, keys: old });
    expect((await mid.read(6 << 20, 65536)).every((b) => b === 0)).toBe(true);
    await mid.close();

    const r = await deepRekey(layers[2]!, { keys: old, lockers: [phraseLocker('new')] });
    expect(r.operation).toBe('rekey-deep');
    expect(r.notes?.join(' ')).toContain('3 layers');
    const nw = { passphrase: 'new' };
    for (const [i, l] of layers.entries()) {
      expect(await plainOf(l, nw), `plaintext of ${l}`).toBe(plain[i]);
      expect(await structureOf(l), `grains held by ${l}`).toBe(shape[i]);
      expect(await storedGrain(l, held[i]!), `ciphertext of a grain of ${l}`).not.toBe(stored[i]);
      expect(await codeOf(openDisk(l, { readOnly: true, keys: old })), `old key on ${l}`).toBe('ERR_WRONG_KEY');
      const after = (await readEncryptionParams(l))!;
      // The old wrapped DEK is gone: a new KeySafe, disk id and authenticator, shared by every layer.
      expect(after.keySafe).not.toBe(before[i]!.keySafe);
      expect(after.keySafe).toBe((await readEncryptionParams(layers[0]!))!.keySafe);
      expect(after.diskId).not.toBe(before[i]!.diskId);
      expect(after.authenticator).not.toBe(before[i]!.authenticator);
      expect((await verifyDisk(l, { keys: nw })).ok).toBe(true);
      // The same disk rewritten in place of itself: each layer keeps its ddb.uuid (a backup history follows the base's).
      expect(await uuidOf(l), `ddb.uuid of ${l}`).toBe(uuids[i]);
    }
    const chain = JSON.parse(execFileSync('qemu-img', ['info', '--backing-chain', '--output=json', layers[2]!], { encoding: 'utf8' })) as Array<{
      filename: string;
    }>;
    expect(chain.map((c) => c.filename)).toEqual([...layers].reverse());
    // Layers with children stay read-only; nothing of the job is left.
    expect(
      readdirSync(dir)
        .filter((f) => f.endsWith('.vmdk'))
        .sort(),
    ).toEqual(['vm-000001.vmdk', 'vm-000002.vmdk', 'vm.vmdk']);
    expect(leftovers(dir)).toEqual([]);
  });

  it('from the base path with the default lockers: a new KEK made for the chain, the old one retired', async () => {
    const dir = join(tmp.dir, 'base');
    const local = new LocalKeyProvider({ home: join(tmp.dir, 'home-base'), scrypt: { n: 16, r: 1, p: 1 } });
    const layers = await qemuChain(dir, [{ kind: 'provider', provider: local }], { providers: [local] });
    const keys = { providers: [local] };
    const plain = await Promise.all(layers.map((l) => plainOf(l, keys)));
    const oldKek = describeKeySafe((await readEncryptionParams(layers[0]!))!.keySafe)[0]!.keyId!;
    const r = await deepRekey(layers[0]!, { keys });
    expect(r.keyRotation?.retired).toEqual([{ providerId: 'local', keyId: oldKek }]);
    const after = (await readEncryptionParams(layers[2]!))!;
    const newKek = describeKeySafe(after.keySafe)[0]!.keyId!;
    expect(newKek).not.toBe(oldKek);
    expect(await local.keyOwner(newKek)).toBe(after.diskId);
    for (const [i, l] of layers.entries()) expect(await plainOf(l, keys), l).toBe(plain[i]);
    expect(leftovers(dir)).toEqual([]);
    await local.close();
  });

  it('refuses a chain with a branch (naming it), and a rekey in place, before writing anything', async () => {
    const dir = join(tmp.dir, 'branch');
    const layers = await qemuChain(dir, [phraseLocker('old')], { passphrase: 'old' });
    const keys = { passphrase: 'old' };
    const before = await readEncryptionParams(layers[0]!);
    await expect(deepRekey(layers[1]!, { keys, lockers: [phraseLocker('new')], inPlace: true })).rejects.toMatchObject({ code: 'ERR_SNAPSHOT_CHAIN' });
    chmodSync(layers[1]!, 0o644);
    const other = await createEncryptedSnapshot(layers[1]!, { keys, name: 'other.vmdk' });
    const err = await deepRekey(layers[0]!, { keys, lockers: [phraseLocker('new')] }).catch((e: Error & { code?: string }) => e);
    expect(err).toMatchObject({ code: 'ERR_SNAPSHOT_SIBLINGS' });
    expect((err as Error).message).toContain(other);
    expect(await readEncryptionParams(layers[0]!)).toEqual(before);
    expect(leftovers(dir)).toEqual([]);
  });

  it('failing after the base is staged: the old chain stands, the KEK made for it is removed, nothing is left', async () => {
    const dir = join(tmp.dir, 'fail');
    const local = new LocalKeyProvider({ home: join(tmp.dir, 'home-fail'), scrypt: { n: 16, r: 1, p: 1 } });
    const layers = await qemuChain(dir, [{ kind: 'provider', provider: local }], { providers: [local] });
    const plain = await Promise.all(layers.map((l) => plainOf(l, { providers: [local] })));
    const before = await readEncryptionParams(layers[2]!);
    const kekCount = (await local.list()).length;
    // The provider goes down once the base's copy is done: the first child cannot be made.
    let down = false;
    const flaky = Object.assign(Object.create(local) as LocalKeyProvider, {
      getKey: (keyId: string) => (down ? Promise.reject(new Error('provider down')) : local.getKey(keyId)),
    });
    const err = await deepRekey(layers[2]!, {
      keys: { providers: [flaky] },
      onProgress: (p) => {
        expect(p.operation).toBe('rekey-deep');
        if (p.bytesTotal > 0 && p.bytesDone === p.bytesTotal) down = true;
      },
    }).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect(down).toBe(true);
    expect((await local.list()).length, 'the KEK made for the new chain is gone').toBe(kekCount);
    expect(await readEncryptionParams(layers[2]!)).toEqual(before);
    for (const [i, l] of layers.entries()) expect(await plainOf(l, { providers: [local] }), l).toBe(plain[i]);
    expect(leftovers(dir)).toEqual([]);
    await local.close();
  });

  it('resume of a layer whose chain has no pending job returns null', async () => {
    const dir = join(tmp.dir, 'nothing');
    const layers = await qemuChain(dir, [phraseLocker('old')], { passphrase: 'old' });
    expect(await resumeDisk(layers[1]!, { keys: { passphrase: 'old' } })).toBeNull();
    expect(existsSync(layers[2]!)).toBe(true);
  });

  it('vmseal rekey --deep on a middle layer (CLI): the whole chain, a new KEK, info and verify of every layer fine', async () => {
    const dir = join(tmp.dir, 'cli');
    const home = join(tmp.dir, 'home-cli');
    const local = new LocalKeyProvider({ home });
    const layers = await qemuChain(dir, [{ kind: 'provider', provider: local }], { providers: [local] });
    const keys = { providers: [local] };
    const plain = await Promise.all(layers.map((l) => plainOf(l, keys)));
    const before = (await readEncryptionParams(layers[0]!))!;
    await local.close();
    const env = cleanEnv({ VMSEAL_HOME: home });
    const r = await vmseal(['rekey', layers[1]!, '--deep', '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(json(r).notes.join(' ')).toContain('every layer re-encrypted');
    for (const [i, l] of layers.entries()) {
      const v = await vmseal(['verify', l, '--json'], env);
      expect(v.code, v.stderr).toBe(0);
      const after = (await readEncryptionParams(l))!;
      expect(after.diskId).not.toBe(before.diskId);
      expect(describeKeySafe(after.keySafe)[0]!.keyId).not.toBe(describeKeySafe(before.keySafe)[0]!.keyId);
      const reopened = new LocalKeyProvider({ home });
      expect(await plainOf(l, { providers: [reopened] }), l).toBe(plain[i]);
      await reopened.close();
    }
    expect(leftovers(dir)).toEqual([]);
  });
});
