// Retiring KMIP keys against a real PyKMIP server: the disk id recorded in a key's Name, Revoke as
// "retire", and the State check that getKey makes because Get still returns a revoked key.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { KmipError, KmipKeyProvider } from '../../src/kmip/index.js';
import type { CreateKeyOptions, KeyRef } from '../../src/keys/index.js';
import { encryptDisk } from '../../src/pipeline/index.js';
import { tempDir } from '../disk/helpers.js';

let kms: PyKmip;
const providers: KmipKeyProvider[] = [];
function provider(extra: { allowRetired?: boolean; protocolVersion?: string } = {}): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('pykmip-test'), timeoutMs: 5000, ...extra });
  providers.push(p);
  return p;
}

beforeAll(async () => {
  kms = await startPyKmip();
});

afterAll(async () => {
  for (const p of providers) await p.close();
  await kms?.stop();
});

const DISK = '0123456789abcdef0123456789abcdef';

describe('KMIP key retirement', () => {
  it('records the disk a key was made for in its Name; other keys have no owner', async () => {
    const p = provider();
    const own = await p.createKey({ diskId: DISK });
    expect(await p.keyOwner(own.keyId)).toBe(DISK);
    expect(await p.locate(`vmseal-kek-disk-${DISK}`)).toContain(own.keyId);
    const shared = await p.createKey();
    expect(await p.keyOwner(shared.keyId)).toBeUndefined();
    const named = await p.createKey({ name: 'batch-2026', diskId: DISK });
    expect(await p.keyOwner(named.keyId)).toBeUndefined();
  });

  it('keyOwner and the State check work over KMIP 2.0 too (Attributes structure, Attribute References)', async () => {
    const p = provider({ protocolVersion: '2.0' });
    const own = await p.createKey({ diskId: DISK });
    expect(await p.keyOwner(own.keyId)).toBe(DISK);
    await p.retireKey(own.keyId);
    await expect(p.getKey(own.keyId)).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED' });
  });

  it('a retired (revoked) key is still served by Get, but getKey refuses it unless allowRetired', async () => {
    const p = provider();
    const ref = await p.createKey({ diskId: DISK });
    const before = await p.getKey(ref.keyId);
    await p.retireKey(ref.keyId);
    expect(await p.getState(ref.keyId)).toBe('Deactivated');
    // The server itself still hands the material out: the State check is vmseal's.
    const raw = await p.client.getSymmetricKey(ref.keyId);
    expect(raw.material.equals(before)).toBe(true);
    const err = await p.getKey(ref.keyId).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KmipError);
    expect(err).toMatchObject({ code: 'ERR_KEY_RETIRED' });
    expect((err as Error).message).toContain('Deactivated');
    const restoring = provider({ allowRetired: true });
    expect((await restoring.getKey(ref.keyId)).equals(before)).toBe(true);
    // Retiring twice is harmless; destroying a retired key works.
    await p.retireKey(ref.keyId);
    await p.destroyKey(ref.keyId);
    await expect(restoring.getKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KMIP_OPERATION_FAILED', resultReason: 'ItemNotFound' });
  });
});

describe('a KMIP key made by a job that does not complete', () => {
  it('is revoked and destroyed when the job is aborted', async () => {
    const tmp = tempDir('vmseal-kmip-abort-');
    try {
      const made: KeyRef[] = [];
      const ac = new AbortController();
      class Hooked extends KmipKeyProvider {
        override async createKey(opts?: CreateKeyOptions): Promise<KeyRef> {
          const ref = await super.createKey(opts);
          made.push(ref);
          ac.abort();
          return ref;
        }
      }
      const p = new Hooked({ ...kms.providerOptions('pykmip-test'), timeoutMs: 5000 });
      providers.push(p);
      const plain = join(tmp.dir, 'plain.raw');
      writeFileSync(plain, Buffer.alloc(1 << 20, 7));
      const out = join(tmp.dir, 'out');
      mkdirSync(out);
      await expect(
        encryptDisk(plain, join(out, 'enc.vmdk'), { subformat: 'monolithicFlat', lockers: [{ kind: 'provider', provider: p }], signal: ac.signal }),
      ).rejects.toMatchObject({
        code: 'ERR_ABORTED',
      });
      expect(made).toHaveLength(1);
      await expect(p.getState(made[0]!.keyId)).rejects.toMatchObject({ resultReason: 'ItemNotFound' });
      expect(readdirSync(out)).toEqual([]);
    } finally {
      tmp.cleanup();
    }
  });
});
