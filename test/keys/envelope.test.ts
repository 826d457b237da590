import { describe, it, expect } from 'vitest';
import {
  generateDek,
  wipe,
  sealDek,
  unlockKeySafe,
  rewrapKeySafe,
  describeKeySafe,
  KeySafe,
  KeyCache,
  KeyError,
  LocalKeyProvider,
  type LockerSpec,
} from '../../src/keys/index.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeProvider, codeOf, esc } from './helpers.js';
import { VmsealError } from '../../src/errors.js';

// Low KDF costs, explicitly (the defaults are tested in defaults.test.ts).
const fastPass = (passphrase: string, kdf: 'pbkdf2-sha256' | 'scrypt' | 'workstation' = 'pbkdf2-sha256'): LockerSpec => ({
  kind: 'passphrase',
  passphrase,
  kdf,
  rounds: 1000,
  scrypt: { n: 1024, r: 8, p: 1 },
});

describe('generateDek / wipe', () => {
  it('makes 64-byte XTS-AES-256 and 32-byte XTS-AES-128 keys with distinct halves', () => {
    const a = generateDek('aes-256-xts');
    const b = generateDek('aes-128-xts');
    expect(a.length).toBe(64);
    expect(b.length).toBe(32);
    expect(a.subarray(0, 32).equals(a.subarray(32))).toBe(false);
    expect(b.subarray(0, 16).equals(b.subarray(16))).toBe(false);
    expect(generateDek().length).toBe(64);
    expect(a.equals(generateDek('aes-256-xts'))).toBe(false);
    wipe(a);
    expect(a.every((x) => x === 0)).toBe(true);
    wipe(undefined);
  });

  it('refuses an unknown cipher without echoing odd values', () => {
    expect(() => generateDek('aes-512-xts' as never)).toThrowError("Expected 'aes-256-xts' or 'aes-128-xts' for cipher but received 'aes-512-xts'");
    expect(() => generateDek('secret value!' as never)).toThrowError('received a string of length 13');
  });
});

describe('sealDek / unlockKeySafe', () => {
  it('seals under a new provider KEK and unlocks with the provider', async () => {
    const p = new FakeProvider('kms1');
    const dek = generateDek('aes-256-xts');
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    expect(p.creates).toBe(1);
    const keyId = [...p.keys.keys()][0]!;
    expect(text).toMatch(new RegExp(`^vmware:key/list/\\(pair/\\(fqid/<VMWARE-NULL>/kms1/${esc(keyId)},VMSEAL%2dETM%2dHMAC%2dSHA%2d256,[A-Za-z0-9%]+\\)\\)$`));
    const lockedB64 = decodeURIComponent(/,([A-Za-z0-9%]+)\)\)$/.exec(text)![1]!);
    // IV 16 + CBC(PKCS#7 of a 124-byte dict = 128) + HMAC-SHA-256 32 (encrypt-then-MAC)
    expect(Buffer.from(lockedB64, 'base64').length).toBe(16 + 128 + 32);
    const r = await unlockKeySafe(text, { providers: [p] });
    expect(r).toMatchObject({ type: 'key', cipher: 'XTS-AES-256', unlockedBy: { kind: 'provider', providerId: 'kms1', keyId, fromCache: false, index: 0 } });
    expect(r.key.equals(dek)).toBe(true);
    // a record of providers works too
    const r2 = await unlockKeySafe(text, { providers: { kms1: p } });
    expect(r2.key.equals(dek)).toBe(true);
  });

  it('seals under an existing KEK id', async () => {
    const p = new FakeProvider();
    const ref = await p.createKey();
    const dek = generateDek('aes-128-xts');
    const text = await sealDek(dek, { cipher: 'aes-128-xts', lockers: [{ kind: 'provider', provider: p, keyId: ref.keyId }] });
    expect(p.creates).toBe(1);
    expect(describeKeySafe(text)).toEqual([
      { index: 0, kind: 'provider', lockerType: 'fqid', providerId: 'fake', keyId: ref.keyId, mac: 'VMSEAL-ETM-HMAC-SHA-256' },
    ]);
    const r = await unlockKeySafe(text, { providers: [p] });
    expect(r.cipher).toBe('XTS-AES-128');
    expect(r.key.equals(dek)).toBe(true);
  });

  for (const kdf of ['pbkdf2-sha256', 'scrypt', 'workstation'] as const) {
    it(`seals and unlocks with a ${kdf} passphrase locker`, async () => {
      const dek = generateDek();
      const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [fastPass('correct horse', kdf)] });
      const [info] = describeKeySafe(text);
      expect(info!.kind).toBe('passphrase');
      expect(info!.mac).toBe(kdf === 'workstation' ? 'HMAC-SHA-1' : 'HMAC-SHA-256');
      expect(info!.kdf).toEqual(
        kdf === 'scrypt'
          ? { name: 'SCRYPT', n: 1024, r: 8, p: 1 }
          : { name: kdf === 'workstation' ? 'PBKDF2-HMAC-SHA-1' : 'PBKDF2-HMAC-SHA-256', rounds: 1000 },
      );
      const r = await unlockKeySafe(text, { passphrase: 'correct horse' });
      expect(r.key.equals(dek)).toBe(true);
      expect(await codeOf(() => unlockKeySafe(text, { passphrase: 'wrong horse' }))).toBe('ERR_WRONG_KEY');
      // a Buffer passphrase is the same bytes
      expect((await unlockKeySafe(text, { passphrase: Buffer.from('correct horse') })).key.equals(dek)).toBe(true);
    });
  }

  it('writes the phrase dict escaped twice, as Workstation does', async () => {
    const text = await sealDek(generateDek(), { cipher: 'aes-256-xts', lockers: [fastPass('pw', 'workstation')] });
    // salt of 16 bytes → base64 ends in "==" → %3d%3d in the dict → %253d%253d in the KeySafe
    expect(text).toMatch(
      /phrase\/[A-Za-z0-9%]+\/pass2key%3dPBKDF2%2dHMAC%2dSHA%2d1%3acipher%3dAES%2d256%3arounds%3d1000%3asalt%3d[A-Za-z0-9%]+%253d%253d,HMAC%2dSHA%2d1,/,
    );
  });

  it('several pairs are independent ways to the same DEK', async () => {
    const p1 = new FakeProvider('a');
    const p2 = new FakeProvider('b');
    const dek = generateDek();
    const text = await sealDek(dek, {
      cipher: 'aes-256-xts',
      lockers: [{ kind: 'provider', provider: p1 }, { kind: 'provider', provider: p2 }, fastPass('recovery')],
    });
    expect(describeKeySafe(text).map((l) => l.kind)).toEqual(['provider', 'provider', 'passphrase']);
    for (const opts of [{ providers: [p1] }, { providers: [p2] }, { passphrase: 'recovery' }]) {
      expect((await unlockKeySafe(text, opts)).key.equals(dek)).toBe(true);
    }
    p1.up = false;
    const r = await unlockKeySafe(text, { providers: [p1, p2] });
    expect(r.unlockedBy).toMatchObject({ providerId: 'b', index: 1 });
    p2.up = false;
    const r2 = await unlockKeySafe(text, { providers: [p1, p2], passphrase: 'recovery' });
    expect(r2.unlockedBy).toMatchObject({ kind: 'passphrase', index: 2 });
  });

  it('sealing twice gives different text (fresh IVs and salts)', async () => {
    const p = new FakeProvider();
    const ref = await p.createKey();
    const dek = generateDek();
    const spec: LockerSpec[] = [{ kind: 'provider', provider: p, keyId: ref.keyId }];
    const a = await sealDek(dek, { cipher: 'aes-256-xts', lockers: spec });
    const b = await sealDek(dek, { cipher: 'aes-256-xts', lockers: spec });
    expect(a).not.toBe(b);
  });

  it('reports ERR_NO_KEY, ERR_DISK_LOCKED and ERR_WRONG_KEY', async () => {
    const p = new FakeProvider('kms');
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }, fastPass('pw')] });
    const keyId = [...p.keys.keys()][0]!;
    // nothing given
    const noKey = await unlockKeySafe(text, {}).catch((e: KeyError) => e);
    expect(noKey).toBeInstanceOf(KeyError);
    expect((noKey as KeyError).code).toBe('ERR_NO_KEY');
    expect((noKey as KeyError).message).toContain(`'kms' for key '${keyId}'`);
    expect((noKey as KeyError).message).toContain('a passphrase');
    // another provider id only: not applicable
    expect(await codeOf(() => unlockKeySafe(text, { providers: [new FakeProvider('other')] }))).toBe('ERR_NO_KEY');
    // provider down
    p.up = false;
    const locked = (await unlockKeySafe(text, { providers: [p] }).catch((e) => e)) as KeyError;
    expect(locked.code).toBe('ERR_DISK_LOCKED');
    expect(locked.providerId).toBe('kms');
    expect(locked.keyId).toBe(keyId);
    expect(locked.message).toContain(`key '${keyId}' of provider 'kms'`);
    expect(locked.attempts).toEqual([expect.objectContaining({ index: 0, kind: 'provider', code: 'ERR_KMS_UNAVAILABLE' })]);
    // provider down and a wrong passphrase: the wrong passphrase is what the user can fix now
    expect(await codeOf(() => unlockKeySafe(text, { providers: [p], passphrase: 'nope' }))).toBe('ERR_WRONG_KEY');
    // provider up but returning another key for the id: the MAC fails
    p.up = true;
    p.keys.set(keyId, Buffer.alloc(32, 7));
    const wrong = (await unlockKeySafe(text, { providers: [p] }).catch((e) => e)) as KeyError;
    expect(wrong.code).toBe('ERR_WRONG_KEY');
    expect(wrong.message).toContain('wrong key');
  });

  it('the key is never in error messages', async () => {
    const p = new FakeProvider('kms');
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    p.up = false;
    const e = (await unlockKeySafe(text, { providers: [p] }).catch((x) => x)) as Error;
    for (const enc of ['hex', 'base64'] as const) expect(e.message).not.toContain(dek.toString(enc).slice(0, 16));
  });

  it('refuses a bad provider KEK with ERR_KEY_PROVIDER', async () => {
    const p = new FakeProvider('kms');
    const ref = await p.createKey();
    p.keys.set(ref.keyId, Buffer.alloc(16, 1));
    expect(await codeOf(() => sealDek(generateDek(), { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p, keyId: ref.keyId }] }))).toBe(
      'ERR_KEY_PROVIDER',
    );
  });

  it('refuses a provider whose createKey returns another provider id', async () => {
    const p = new FakeProvider('kms');
    p.createKey = async () => ({ providerId: 'other', keyId: 'k' });
    expect(await codeOf(() => sealDek(generateDek(), { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] }))).toBe('ERR_KEY_PROVIDER');
  });

  it('validates its arguments', async () => {
    const dek = generateDek();
    expect(await codeOf(() => sealDek(dek, { cipher: 'aes-128-xts', lockers: [fastPass('x')] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => sealDek(dek, { cipher: 'aes-256-xts', lockers: [] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => sealDek(dek, { cipher: 'rot13', lockers: [fastPass('x')] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'passphrase', passphrase: '' }] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'passphrase', passphrase: 'x', rounds: 0 }] }))).toBe(
      'ERR_INVALID_ARGUMENT',
    );
    expect(await codeOf(() => sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'nope' } as never] }))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => unlockKeySafe(42 as never))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => unlockKeySafe('vmware:key/rawkey/abc'))).toBe('ERR_UNSUPPORTED_LOCKER');
    expect(await codeOf(() => unlockKeySafe('garbage'))).toBe('ERR_KEYSAFE');
  });
});

describe('rewrapKeySafe (shallow rekey)', () => {
  it('moves the DEK to a new KEK, adds and removes a recovery passphrase, keeping the DEK', async () => {
    const p = new FakeProvider('kms');
    const q = new FakeProvider('kms2');
    const dek = generateDek();
    const original = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    const oldKey = [...p.keys.keys()][0]!;

    // add a recovery passphrase
    const withRecovery = await rewrapKeySafe(original, { unlock: { providers: [p] }, add: [fastPass('recover me')] });
    expect(withRecovery.startsWith(original.slice(0, -1))).toBe(true); // the existing pair is kept byte for byte
    expect((await unlockKeySafe(withRecovery, { passphrase: 'recover me' })).key.equals(dek)).toBe(true);

    // new KEK on another provider, old provider locker removed
    const moved = await rewrapKeySafe(withRecovery, {
      unlock: { providers: [p] },
      add: [{ kind: 'provider', provider: q }],
      remove: (l) => l.kind === 'provider' && l.keyId === oldKey,
    });
    expect(describeKeySafe(moved).map((l) => [l.kind, l.providerId])).toEqual([
      ['passphrase', undefined],
      ['provider', 'kms2'],
    ]);
    expect((await unlockKeySafe(moved, { providers: [q] })).key.equals(dek)).toBe(true);
    expect(await codeOf(() => unlockKeySafe(moved, { providers: [p] }))).toBe('ERR_NO_KEY');

    // remove the recovery passphrase
    const noRecovery = await rewrapKeySafe(moved, { unlock: { providers: [q] }, remove: (l) => l.kind === 'passphrase' });
    expect(describeKeySafe(noRecovery).map((l) => l.kind)).toEqual(['provider']);
    expect(await codeOf(() => unlockKeySafe(noRecovery, { passphrase: 'recover me' }))).toBe('ERR_NO_KEY');

    // never leave no locker
    expect(await codeOf(() => rewrapKeySafe(noRecovery, { unlock: { providers: [q] }, remove: () => true }))).toBe('ERR_INVALID_ARGUMENT');
    // a wrong unlock fails before anything is written
    expect(await codeOf(() => rewrapKeySafe(withRecovery, { unlock: { passphrase: 'wrong' }, add: [fastPass('x')] }))).toBe('ERR_WRONG_KEY');
  });

  it('keeps unsupported lockers it cannot open', async () => {
    const dek = generateDek();
    const sealed = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [fastPass('pw')] });
    const pair = KeySafe.parse(sealed).pairs[0]!;
    const ldapPair = `pair/(ldap/server/cn%3dx,HMAC%2dSHA%2d256,${pair.lockedData.raw})`;
    const text = sealed.slice(0, -1) + ',' + ldapPair + ')';
    expect(describeKeySafe(text)[1]).toEqual({ index: 1, kind: 'unsupported', lockerType: 'ldap', mac: 'HMAC-SHA-256' });
    const out = await rewrapKeySafe(text, { unlock: { passphrase: 'pw' }, add: [fastPass('pw2')] });
    expect(out).toContain(ldapPair);
    expect(await codeOf(() => unlockKeySafe(`vmware:key/list/(${ldapPair})`, { passphrase: 'pw' }))).toBe('ERR_UNSUPPORTED_LOCKER');
  });
});

describe('KeyCache with unlocking (the host memory)', () => {
  it('unlocks from the cache with the provider down; clear() locks; unlocks again once the provider is back', async () => {
    const p = new FakeProvider('kms');
    const cache = new KeyCache();
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }], cache });
    const keyId = [...p.keys.keys()][0]!;
    expect(cache.list()).toEqual([{ providerId: 'kms', keyId }]);

    p.up = false;
    const r = await unlockKeySafe(text, { providers: [p], cache });
    expect(r.key.equals(dek)).toBe(true);
    expect(r.unlockedBy).toMatchObject({ kind: 'provider', fromCache: true });
    expect(p.gets).toBe(1); // only the fetch right after creation
    // the cache alone is not enough: a KEK is only handed to the provider instance that fetched it
    expect(await codeOf(() => unlockKeySafe(text, { cache }))).toBe('ERR_DISK_LOCKED');

    // creating a new KEK needs the provider
    const err = (await sealDek(generateDek(), { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }], cache }).catch((e) => e)) as Error & {
      code: string;
    };
    expect(err.code).toBe('ERR_KMS_UNAVAILABLE');

    // a host restart
    cache.clear();
    expect(cache.size).toBe(0);
    const locked = (await unlockKeySafe(text, { providers: [p], cache }).catch((e) => e)) as KeyError;
    expect(locked.code).toBe('ERR_DISK_LOCKED');
    expect([locked.providerId, locked.keyId]).toEqual(['kms', keyId]);
    // cache but no provider given: still "locked", naming the key
    expect(await codeOf(() => unlockKeySafe(text, { cache }))).toBe('ERR_DISK_LOCKED');

    p.up = true;
    const back = await unlockKeySafe(text, { providers: [p], cache });
    expect(back.key.equals(dek)).toBe(true);
    expect(back.unlockedBy).toMatchObject({ fromCache: false });
    expect(cache.has(p, keyId)).toBe(true);
  });

  it('a KEK cached by one provider instance is never returned to another, even with the same provider id and key id', async () => {
    // Two tenants of one process, each with its own provider instance (own credentials) for the same KMS.
    const tenantA = new FakeProvider('kms');
    const tenantB = new FakeProvider('kms');
    const dek = generateDek();
    const cache = new KeyCache();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: tenantA }], cache });
    const keyId = [...tenantA.keys.keys()][0]!;
    // B's credentials do not grant this key: the KMS refuses it.
    tenantB.getKey = async (id: string) => {
      tenantB.gets++;
      throw new VmsealError('ERR_KMIP_OPERATION_FAILED', `permission denied for ${id}`);
    };
    expect(cache.has(tenantA, keyId)).toBe(true);
    expect(cache.has(tenantB, keyId)).toBe(false);
    expect(cache.get(tenantB, keyId)).toBeUndefined();

    const denied = (await unlockKeySafe(text, { providers: [tenantB], cache }).catch((e) => e)) as KeyError;
    expect(denied.code).toBe('ERR_DISK_LOCKED');
    expect(denied.attempts).toEqual([expect.objectContaining({ providerId: 'kms', keyId, code: 'ERR_KMIP_OPERATION_FAILED' })]);
    expect(tenantB.gets).toBe(1); // B's own provider was asked, and its answer stands
    expect(await codeOf(() => unlockKeySafe(text, { providers: { kms: tenantB }, cache }))).toBe('ERR_DISK_LOCKED');
    // Wrapping a new DEK under the existing key id through B does not borrow A's cached KEK either.
    expect(await codeOf(() => sealDek(generateDek(), { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: tenantB, keyId }], cache }))).toBe(
      'ERR_KMIP_OPERATION_FAILED',
    );

    // A still unlocks from the cache, with its KMS down.
    tenantA.up = false;
    const a = await unlockKeySafe(text, { providers: [tenantA], cache });
    expect(a.key.equals(dek)).toBe(true);
    expect(a.unlockedBy).toMatchObject({ fromCache: true });
    expect(cache.list()).toEqual([{ providerId: 'kms', keyId }]);
    expect(cache.delete(tenantB, keyId)).toBe(false);
    expect(cache.delete(tenantA, keyId)).toBe(true);
  });

  it('get returns copies; clear wipes; TTL expires entries', async () => {
    const cache = new KeyCache({ ttlMs: 30 });
    const kek = Buffer.alloc(32, 5);
    const p = new FakeProvider('p');
    cache.set(p, 'k', kek);
    kek.fill(0); // the caller's buffer is its own
    const a = cache.get(p, 'k')!;
    expect(a.equals(Buffer.alloc(32, 5))).toBe(true);
    a.fill(9);
    expect(cache.get(p, 'k')!.equals(Buffer.alloc(32, 5))).toBe(true);
    expect(cache.delete(p, 'k')).toBe(true);
    expect(cache.get(p, 'k')).toBeUndefined();
    cache.set(p, 'k', Buffer.alloc(32, 5));
    await new Promise((r) => setTimeout(r, 80));
    expect(cache.get(p, 'k')).toBeUndefined();
    expect(cache.size).toBe(0);
    expect(() => new KeyCache({ ttlMs: -1 })).toThrowError(/ttlMs/);
    expect(() => cache.set(p, '', Buffer.alloc(32))).toThrowError(/keyId/);
    // a provider id string is not a provider: the cache cannot be read by name
    expect(() => cache.set('p' as unknown as FakeProvider, 'k', Buffer.alloc(32))).toThrowError(/KeyProvider/);
    expect(() => cache.get('p' as unknown as FakeProvider, 'k')).toThrowError(/KeyProvider/);
  });

  it('clear() wipes the stored buffers', () => {
    const cache = new KeyCache();
    cache.set(new FakeProvider('p'), 'k', Buffer.alloc(32, 1));
    const internal = (cache as unknown as { entries: Map<string, { kek: Buffer }> }).entries.values().next().value!.kek;
    cache.clear();
    expect(internal.every((b) => b === 0)).toBe(true);
  });

  it('a process exit wipes every cache (the exit hook is installed and wipes them all)', async () => {
    const { wipeAllCaches } = await import('../../src/keys/cache.js');
    const a = new KeyCache();
    const b = new KeyCache({ ttlMs: 60_000 });
    const p = new FakeProvider('p');
    a.set(p, 'k', Buffer.alloc(32, 1));
    b.set(p, 'k', Buffer.alloc(32, 2));
    const bufs = [a, b].map((c) => (c as unknown as { entries: Map<string, { kek: Buffer }> }).entries.values().next().value!.kek);
    expect(process.listeners('exit')).toContain(wipeAllCaches);
    wipeAllCaches();
    expect(bufs.every((buf) => buf.every((x) => x === 0))).toBe(true);
    expect(a.size + b.size).toBe(0);
  });
});

describe('a retired provider key', () => {
  it('fails the unlock with ERR_KEY_RETIRED, not "locked"', async () => {
    const home = mkdtempSync(join(tmpdir(), 'vmseal-retired-'));
    try {
      const local = new LocalKeyProvider({ home });
      const dek = generateDek('aes-256-xts');
      const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: local }], diskId: 'disk-1' });
      const keyId = describeKeySafe(text)[0]!.keyId!;
      expect(await local.keyOwner(keyId)).toBe('disk-1');
      await local.retireKey(keyId);
      await expect(unlockKeySafe(text, { providers: [local] })).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED', keyId, providerId: 'local' });
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});
