// The keys a copy job creates are listed in its staging folder and removed when the job does not
// complete: at once on an abort, or by the next job on the same name when the process died.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { LocalKeyProvider, type CreateKeyOptions, type KeyProvider, type KeyRef } from '../../src/keys/index.js';
import { encryptDisk, shallowRekey } from '../../src/pipeline/index.js';
import { patternBytes, phraseLocker, tempDir } from '../disk/helpers.js';

const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let plainRaw: string;

beforeAll(() => {
  tmp = tempDir('vmseal-job-keys-');
  plainRaw = join(tmp.dir, 'plain.raw');
  writeFileSync(plainRaw, patternBytes(4 * MiB, 5));
});
afterAll(() => tmp.cleanup());

/** A keystore whose createKey runs `after` once the key exists (to interrupt a job right then). */
class HookedProvider extends LocalKeyProvider {
  after: (() => void) | undefined;
  override async createKey(opts?: CreateKeyOptions): Promise<KeyRef> {
    const ref = await super.createKey(opts);
    this.after?.();
    return ref;
  }
}

/** A pid that belonged to a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '0']);
  return r.pid!;
}

describe('keys made by a job that does not complete', () => {
  it('an aborted encrypt removes the key it created', async () => {
    const dir = join(tmp.dir, 'abort');
    mkdirSync(dir);
    const local = new HookedProvider({ home: join(tmp.dir, 'home-abort') });
    await local.init();
    const ac = new AbortController();
    local.after = () => ac.abort();
    const job = encryptDisk(plainRaw, join(dir, 'out.vmdk'), {
      subformat: 'monolithicFlat',
      lockers: [{ kind: 'provider', provider: local }],
      signal: ac.signal,
    });
    await expect(job).rejects.toMatchObject({ code: 'ERR_ABORTED' });
    expect(await local.list()).toEqual([]);
    expect(readdirSync(dir)).toEqual([]);
  });

  it("the next job on the name removes a dead job's keys, and keeps the list when it cannot reach their provider", async () => {
    const dir = join(tmp.dir, 'stale');
    mkdirSync(dir);
    const local = new LocalKeyProvider({ home: join(tmp.dir, 'home-stale') });
    const orphan = await local.createKey({ diskId: 'ab'.repeat(16) });
    const stage = join(dir, `.out.vmdk.vmseal-tmp-${deadPid()}-0badc0de`);
    mkdirSync(stage);
    writeFileSync(join(stage, 'owner.json'), JSON.stringify({ pid: deadPid(), host: hostname(), started: new Date().toISOString() }));
    writeFileSync(join(stage, 'keys.json'), JSON.stringify([orphan]));
    writeFileSync(join(stage, 'out-flat.vmdk'), Buffer.alloc(4096));

    // A job without the local provider cannot remove the key: only the list survives.
    await encryptDisk(plainRaw, join(dir, 'out.vmdk'), { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')], force: true });
    expect(readdirSync(stage).sort()).toEqual(['keys.json', 'owner.json']);
    expect((await local.list()).map((k) => k.keyId)).toEqual([orphan.keyId]);

    // One that has it removes the key, then the folder.
    const r = await encryptDisk(plainRaw, join(dir, 'out.vmdk'), {
      subformat: 'monolithicFlat',
      lockers: [{ kind: 'provider', provider: local }],
      force: true,
    });
    const keys = (await local.list()).map((k) => k.keyId);
    expect(keys).not.toContain(orphan.keyId);
    expect(keys).toHaveLength(1); // the new disk's own key
    expect(readdirSync(dir).sort()).toEqual(['out-flat.vmdk', 'out.vmdk']);
    expect(r.encrypted).toBe(true);
  });
});

/** A provider whose key ids contain "CID": a KeySafe naming one can never stand in a descriptor. */
class CidKeys implements KeyProvider {
  readonly id = 'cidkms';
  readonly keys = new Map<string, Buffer>();
  created = 0;
  async createKey(): Promise<KeyRef> {
    const keyId = `CID-${++this.created}`;
    this.keys.set(keyId, randomBytes(32));
    return { providerId: this.id, keyId };
  }
  async getKey(keyId: string): Promise<Buffer> {
    const k = this.keys.get(keyId);
    if (!k) throw new Error(`no key ${keyId}`);
    return Buffer.from(k);
  }
  async destroyKey(keyId: string): Promise<void> {
    this.keys.delete(keyId);
  }
}

describe('re-sealing a KeySafe whose text cannot stand in a descriptor', () => {
  it('reuses the KEK it made instead of making one per try, and the failed job removes it', async () => {
    const dir = join(tmp.dir, 'reseal');
    mkdirSync(dir);
    const kms = new CidKeys();
    await expect(
      encryptDisk(plainRaw, join(dir, 'out.vmdk'), { subformat: 'monolithicFlat', lockers: [{ kind: 'provider', provider: kms }] }),
    ).rejects.toMatchObject({
      code: 'ERR_ENCRYPTION_METADATA',
    });
    expect(kms.created).toBe(1);
    expect(kms.keys.size).toBe(0);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a shallow rekey makes one new KEK however often it re-seals, and removes it when it fails', async () => {
    const dir = join(tmp.dir, 'reseal-shallow');
    mkdirSync(dir);
    const disk = join(dir, 'enc.vmdk');
    await encryptDisk(plainRaw, disk, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
    const kms = new CidKeys();
    await expect(shallowRekey(disk, { keys: { passphrase: 'pw' }, addLockers: [{ kind: 'provider', provider: kms }] })).rejects.toMatchObject({
      code: 'ERR_ENCRYPTION_METADATA',
    });
    expect(kms.created).toBe(1);
    expect(kms.keys.size).toBe(0);
  });
});
