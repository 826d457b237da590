import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtempSync, mkdirSync, rmSync, statSync, readFileSync, writeFileSync, readdirSync, chmodSync, existsSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCipheriv, randomBytes } from 'node:crypto';
import { LocalKeyProvider, LOCAL_PROVIDER_DEFAULTS, KeyError, sealDek, unlockKeySafe, generateDek } from '../../src/keys/index.js';
import { codeOf } from './helpers.js';
import { acquireFileLock } from '../../src/util/lock.js';

// Low scrypt cost, explicitly; the default cost is asserted separately.
const FAST = { n: 1024, r: 8, p: 1 };
let home: string;

beforeEach(() => {
  home = mkdtempSync(join(tmpdir(), 'vmseal-keys-'));
});
afterEach(() => {
  rmSync(home, { recursive: true, force: true });
});

const mode = (f: string) => statSync(f).mode & 0o777;

describe('LocalKeyProvider (key file mode)', () => {
  it('creates the keystore on first use with 0600 files in a 0700 directory', async () => {
    const dir = join(home, 'vs');
    const p = new LocalKeyProvider({ home: dir });
    expect(p.id).toBe('local');
    const ref = await p.createKey({ name: 'vm1' });
    expect(ref.providerId).toBe('local');
    expect(mode(dir)).toBe(0o700);
    expect(mode(p.keystorePath)).toBe(0o600);
    expect(mode(p.masterKeyPath)).toBe(0o600);
    expect(existsSync(p.lockPath)).toBe(false);
    const kek = await p.getKey(ref.keyId);
    expect(kek.length).toBe(32);
    // the keystore holds no KEK in clear
    const store = readFileSync(p.keystorePath, 'utf8');
    expect(store).not.toContain(kek.toString('base64'));
    expect(store).not.toContain(kek.toString('hex'));
    expect(JSON.parse(store)).toMatchObject({ format: 'vmseal-keystore', version: 1, providerId: 'local', master: { source: 'keyfile' } });
    expect(await p.list()).toEqual([{ keyId: ref.keyId, name: 'vm1', created: expect.any(String), state: 'active' }]);
    // a second instance (another process) reads the same key
    const p2 = new LocalKeyProvider({ home: dir });
    expect((await p2.getKey(ref.keyId)).equals(kek)).toBe(true);
    await p.close();
    await p2.close();
  });

  it('uses $VMSEAL_HOME when no home is given', () => {
    const old = process.env.VMSEAL_HOME;
    process.env.VMSEAL_HOME = home;
    try {
      expect(new LocalKeyProvider().home).toBe(home);
    } finally {
      if (old === undefined) delete process.env.VMSEAL_HOME;
      else process.env.VMSEAL_HOME = old;
    }
  });

  it('seals and unlocks a DEK through the provider', async () => {
    const p = new LocalKeyProvider({ home });
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    expect(text).toContain('fqid/<VMWARE-NULL>/local/');
    const fresh = new LocalKeyProvider({ home });
    expect((await unlockKeySafe(text, { providers: [fresh] })).key.equals(dek)).toBe(true);
  });

  it('init is idempotent and does not replace the master key', async () => {
    const p = new LocalKeyProvider({ home });
    await p.init();
    const before = readFileSync(p.masterKeyPath);
    await p.init();
    await new LocalKeyProvider({ home }).init();
    expect(readFileSync(p.masterKeyPath).equals(before)).toBe(true);
  });

  it('destroyKey leaves a tombstone; the key is gone', async () => {
    const p = new LocalKeyProvider({ home });
    const ref = await p.createKey();
    await p.destroyKey(ref.keyId);
    expect(await codeOf(() => p.getKey(ref.keyId))).toBe('ERR_KEYSTORE_KEY_DESTROYED');
    expect(await codeOf(() => p.destroyKey(ref.keyId))).toBe('ERR_KEYSTORE_KEY_DESTROYED');
    expect((await p.list())[0]).toMatchObject({ keyId: ref.keyId, state: 'destroyed', destroyed: expect.any(String) });
    expect(JSON.parse(readFileSync(p.keystorePath, 'utf8')).keys[0].wrapped).toBeUndefined();
    expect(await codeOf(() => p.getKey('no-such-key'))).toBe('ERR_KEYSTORE_NO_SUCH_KEY');
  });

  it('refuses a keystore.json or keystore folder that group or others can read or write, naming the exact chmod', async () => {
    const dir = join(home, "it's here"); // a quote in the path: the chmod command must stay copy-pasteable
    const p = new LocalKeyProvider({ home: dir });
    const ref = await p.createKey();
    await p.close();
    const quoted = (f: string) => `'${f.replace(/'/g, `'\\''`)}'`;

    for (const bad of [0o644, 0o640, 0o604, 0o620, 0o602]) {
      chmodSync(p.keystorePath, bad);
      const err = (await new LocalKeyProvider({ home: dir }).getKey(ref.keyId).catch((e) => e)) as KeyError;
      expect(err).toBeInstanceOf(KeyError);
      expect(err.code).toBe('ERR_KEYSTORE_PERMISSIONS');
      expect(err.file).toBe(p.keystorePath);
      expect(err.message).toBe(`the keystore file is accessible to group or others (mode ${bad.toString(8)}); run: chmod 600 ${quoted(p.keystorePath)}`);
      expect(await codeOf(() => new LocalKeyProvider({ home: dir }).list())).toBe('ERR_KEYSTORE_PERMISSIONS');
    }
    chmodSync(p.keystorePath, 0o600);

    for (const bad of [0o755, 0o750, 0o705, 0o770, 0o707, 0o711]) {
      chmodSync(dir, bad);
      const err = (await new LocalKeyProvider({ home: dir }).getKey(ref.keyId).catch((e) => e)) as KeyError;
      expect(err.code).toBe('ERR_KEYSTORE_PERMISSIONS');
      expect(err.file).toBe(dir);
      expect(err.message).toBe(`the keystore folder is accessible to group or others (mode ${bad.toString(8)}); run: chmod 700 ${quoted(dir)}`);
      expect(await codeOf(() => new LocalKeyProvider({ home: dir }).createKey())).toBe('ERR_KEYSTORE_PERMISSIONS');
      expect(await codeOf(() => new LocalKeyProvider({ home: dir }).init())).toBe('ERR_KEYSTORE_PERMISSIONS');
    }
    chmodSync(dir, 0o700);

    chmodSync(p.masterKeyPath, 0o640);
    const master = (await new LocalKeyProvider({ home: dir }).getKey(ref.keyId).catch((e) => e)) as KeyError;
    expect(master.code).toBe('ERR_KEYSTORE_MASTER_KEY');
    expect(master.message).toBe(`the master key file is accessible to group or others (mode 640); run: chmod 600 ${quoted(p.masterKeyPath)}`);
    chmodSync(p.masterKeyPath, 0o600);

    // stricter than required is fine
    chmodSync(p.keystorePath, 0o400);
    chmodSync(dir, 0o700);
    expect((await new LocalKeyProvider({ home: dir }).getKey(ref.keyId)).length).toBe(32);
    chmodSync(p.keystorePath, 0o600);
  });

  it('refuses an existing keystore folder that others can enter before creating anything in it', async () => {
    const dir = join(home, 'open');
    mkdirSync(dir, { mode: 0o755 });
    chmodSync(dir, 0o755);
    const err = (await new LocalKeyProvider({ home: dir }).createKey().catch((e) => e)) as KeyError;
    expect(err.code).toBe('ERR_KEYSTORE_PERMISSIONS');
    expect(err.message).toBe(`the keystore folder is accessible to group or others (mode 755); run: chmod 700 ${dir}`);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('reports a missing keystore, a missing, unsafe or wrong master key, a corrupt keystore', async () => {
    const p = new LocalKeyProvider({ home });
    expect(await codeOf(() => p.getKey('x'))).toBe('ERR_KEYSTORE_MISSING');
    expect(await codeOf(() => p.list())).toBe('ERR_KEYSTORE_MISSING');
    const ref = await p.createKey();
    await p.close();

    chmodSync(p.masterKeyPath, 0o644);
    const unsafe = (await new LocalKeyProvider({ home }).getKey(ref.keyId).catch((e) => e)) as KeyError;
    expect(unsafe.code).toBe('ERR_KEYSTORE_MASTER_KEY');
    expect(unsafe.message).toContain('chmod 600');
    expect(unsafe.file).toBe(p.masterKeyPath);
    chmodSync(p.masterKeyPath, 0o600);

    const saved = readFileSync(p.masterKeyPath);
    writeFileSync(p.masterKeyPath, `vmseal-master-key-v1 ${Buffer.alloc(32, 1).toString('base64')}\n`, { mode: 0o600 });
    expect(await codeOf(() => new LocalKeyProvider({ home }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_MASTER_KEY');
    writeFileSync(p.masterKeyPath, 'not a key\n', { mode: 0o600 });
    expect(await codeOf(() => new LocalKeyProvider({ home }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_MASTER_KEY');
    rmSync(p.masterKeyPath);
    expect(await codeOf(() => new LocalKeyProvider({ home }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_MASTER_KEY');
    writeFileSync(p.masterKeyPath, saved, { mode: 0o600 });
    expect((await new LocalKeyProvider({ home }).getKey(ref.keyId)).length).toBe(32);

    const good = readFileSync(p.keystorePath, 'utf8');
    for (const bad of [
      '{',
      '[]',
      good.replace('"vmseal-keystore"', '"x"'),
      good.replace('"version": 1', '"version": 3'),
      good.replace(/"wrapped": "[^"]+"/, '"wrapped": "AAAA"'),
    ]) {
      writeFileSync(p.keystorePath, bad);
      expect(await codeOf(() => new LocalKeyProvider({ home }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_CORRUPT');
    }
    // a modified wrapped key (same length) fails its GCM tag
    const doc = JSON.parse(good);
    const w = Buffer.from(doc.keys[0].wrapped, 'base64');
    w[20] ^= 1;
    doc.keys[0].wrapped = w.toString('base64');
    writeFileSync(p.keystorePath, JSON.stringify(doc));
    expect(await codeOf(() => new LocalKeyProvider({ home }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_CORRUPT');
  });

  it('swapping two wrapped keys between ids is detected (the id is authenticated)', async () => {
    const p = new LocalKeyProvider({ home });
    const a = await p.createKey();
    const b = await p.createKey();
    const doc = JSON.parse(readFileSync(p.keystorePath, 'utf8'));
    [doc.keys[0].wrapped, doc.keys[1].wrapped] = [doc.keys[1].wrapped, doc.keys[0].wrapped];
    writeFileSync(p.keystorePath, JSON.stringify(doc));
    expect(await codeOf(() => p.getKey(a.keyId))).toBe('ERR_KEYSTORE_CORRUPT');
    expect(await codeOf(() => p.getKey(b.keyId))).toBe('ERR_KEYSTORE_CORRUPT');
  });

  it('ignores a temp file left by a crashed write; the keystore stays intact', async () => {
    const p = new LocalKeyProvider({ home });
    const ref = await p.createKey();
    const kek = await p.getKey(ref.keyId);
    // a crash between writing the temp file and the rename: half a keystore under a temp name
    const half = readFileSync(p.keystorePath).subarray(0, 40);
    writeFileSync(`${p.keystorePath}.tmp-99999-abcdef012345`, half, { mode: 0o600 });
    const p2 = new LocalKeyProvider({ home });
    expect((await p2.getKey(ref.keyId)).equals(kek)).toBe(true);
    const ref2 = await p2.createKey();
    expect((await p2.list()).map((k) => k.keyId)).toEqual([ref.keyId, ref2.keyId]);
    // no temp file of ours is left behind
    expect(readdirSync(home).filter((f) => f.includes('.tmp-') && !f.includes('99999'))).toEqual([]);
  });

  it('a lock record naming any pid decides nothing; a live holder times out with ERR_KEYSTORE_LOCKED', async () => {
    const p = new LocalKeyProvider({ home, lockTimeoutMs: 200 });
    await p.init();
    writeFileSync(p.lockPath, '2147483646 2020-01-01T00:00:00.000Z\n');
    await p.createKey(); // a record of a pid that does not exist
    writeFileSync(p.lockPath, JSON.stringify({ pid: process.ppid, host: hostname(), operation: 'x', started: 'then', tool: 'vmseal' }));
    await p.createKey(); // a record of a live, unrelated pid: not a lock
    const held = await acquireFileLock(p.lockPath, { mode: 'exclusive', record: { operation: 'test hold' } });
    try {
      const e = (await p.createKey().catch((x) => x)) as KeyError;
      expect(e.code).toBe('ERR_KEYSTORE_LOCKED');
      expect(e.message).toContain(`pid ${process.pid}`);
    } finally {
      held.release();
    }
    expect(existsSync(p.lockPath)).toBe(false);
  });

  it('concurrent writers do not lose keys', async () => {
    const providers = Array.from({ length: 4 }, () => new LocalKeyProvider({ home }));
    await providers[0]!.init();
    const refs = await Promise.all(providers.flatMap((p) => [p.createKey(), p.createKey()]));
    const ids = (await providers[0]!.list()).map((k) => k.keyId).sort();
    expect(ids).toEqual(refs.map((r) => r.keyId).sort());
  });

  it('concurrent first uses of an empty home make one keystore with every key', async () => {
    const dir = join(home, 'fresh');
    const providers = Array.from({ length: 4 }, () => new LocalKeyProvider({ home: dir }));
    const refs = await Promise.all(providers.map((p) => p.createKey()));
    const check = new LocalKeyProvider({ home: dir });
    expect((await check.list()).map((k) => k.keyId).sort()).toEqual(refs.map((r) => r.keyId).sort());
    for (const [i, p] of providers.entries()) expect((await check.getKey(refs[i]!.keyId)).equals(await p.getKey(refs[i]!.keyId))).toBe(true);
  });

  it('a provider that keeps the keystore it wrote sees every change another process makes to it', async () => {
    const a = new LocalKeyProvider({ home });
    const b = new LocalKeyProvider({ home });
    const ref = await a.createKey({ name: 'disk' });
    (await a.getKey(ref.keyId)).fill(0); // served from what `a` wrote
    await b.retireKey(ref.keyId);
    await expect(a.getKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED' });
    const other = await b.createKey({ name: 'other' });
    expect((await a.list()).map((k) => k.keyId)).toEqual([ref.keyId, other.keyId]);
    await b.destroyKey(other.keyId);
    await expect(a.getKey(other.keyId)).rejects.toMatchObject({ code: 'ERR_KEYSTORE_KEY_DESTROYED' });
    // A keystore replaced by another one (another master key) no longer opens with `a`'s.
    rmSync(home, { recursive: true, force: true });
    mkdirSync(home, { mode: 0o700 });
    await new LocalKeyProvider({ home }).init();
    await expect(a.getKey(ref.keyId)).rejects.toMatchObject({ code: 'ERR_KEYSTORE_MASTER_KEY' });
  });

  it('validates its arguments', async () => {
    expect(() => new LocalKeyProvider({ home, id: 'bad id!' })).toThrowError(/for id/);
    expect(() => new LocalKeyProvider({ home, passphrase: '' })).toThrowError(/passphrase/);
    expect(() => new LocalKeyProvider({ home, scrypt: { n: 1000, r: 8, p: 1 } })).toThrowError(/scrypt/);
    const p = new LocalKeyProvider({ home });
    expect(await codeOf(() => p.getKey('' as string))).toBe('ERR_INVALID_ARGUMENT');
    expect(await codeOf(() => p.createKey({ name: 5 as never }))).toBe('ERR_INVALID_ARGUMENT');
  });
});

describe('LocalKeyProvider (passphrase mode)', () => {
  it('protects the master key with scrypt (parameters stored), no key file', async () => {
    const p = new LocalKeyProvider({ home, passphrase: 'keystore pass', scrypt: FAST });
    const ref = await p.createKey();
    const kek = await p.getKey(ref.keyId);
    expect(existsSync(p.masterKeyPath)).toBe(false);
    const doc = JSON.parse(readFileSync(p.keystorePath, 'utf8'));
    expect(doc.master).toEqual({ source: 'passphrase', kdf: 'scrypt', n: 1024, r: 8, p: 1, salt: expect.any(String) });
    // reopened with the passphrase (the stored parameters are used, not the option)
    const again = new LocalKeyProvider({ home, passphrase: 'keystore pass' });
    expect((await again.getKey(ref.keyId)).equals(kek)).toBe(true);
    expect(await codeOf(() => new LocalKeyProvider({ home, passphrase: 'wrong' }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_PASSPHRASE');
    expect(await codeOf(() => new LocalKeyProvider({ home }).getKey(ref.keyId))).toBe('ERR_KEYSTORE_MODE');
  });

  it('a key-file keystore refuses a passphrase', async () => {
    await new LocalKeyProvider({ home }).init();
    expect(await codeOf(() => new LocalKeyProvider({ home, passphrase: 'x', scrypt: FAST }).init())).toBe('ERR_KEYSTORE_MODE');
  });

  it('the default scrypt cost is n=131072, r=8, p=1', () => {
    expect(LOCAL_PROVIDER_DEFAULTS.scrypt).toEqual({ n: 131072, r: 8, p: 1 });
    expect(LOCAL_PROVIDER_DEFAULTS.id).toBe('local');
  });
});

describe('LocalKeyProvider backup and restore', () => {
  it('restores every active key into a new keystore; disks unlock again', async () => {
    const p = new LocalKeyProvider({ home: join(home, 'a'), scrypt: FAST });
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    const gone = await p.createKey({ name: 'gone' });
    await p.destroyKey(gone.keyId);
    const named = await p.createKey({ name: 'named' });
    const file = join(home, 'backup.json');
    expect(await p.backup(file, 'backup pass')).toEqual({ keys: 2 });
    expect(mode(file)).toBe(0o600);
    const raw = readFileSync(file, 'utf8');
    expect(JSON.parse(raw)).toMatchObject({ format: 'vmseal-keystore-backup', version: 1, kdf: { name: 'scrypt', n: 1024, r: 8, p: 1 } });
    const namedKek = await p.getKey(named.keyId);
    expect(raw).not.toContain(namedKek.toString('base64'));

    const q = new LocalKeyProvider({ home: join(home, 'b'), scrypt: FAST, passphrase: 'other store' });
    expect(await codeOf(() => q.restore(file, 'wrong pass'))).toBe('ERR_KEYSTORE_PASSPHRASE');
    expect(await q.restore(file, 'backup pass')).toEqual({ added: 2, unchanged: 0 });
    expect(await q.restore(file, 'backup pass')).toEqual({ added: 0, unchanged: 2 });
    expect((await q.getKey(named.keyId)).equals(namedKek)).toBe(true);
    expect((await q.list()).find((k) => k.keyId === named.keyId)!.name).toBe('named');
    expect((await unlockKeySafe(text, { providers: [q] })).key.equals(dek)).toBe(true);

    // restoring into the original keystore brings back a key destroyed after the backup
    await p.destroyKey(named.keyId);
    expect(await p.restore(file, 'backup pass')).toEqual({ added: 1, unchanged: 1 });
    expect((await p.getKey(named.keyId)).equals(namedKek)).toBe(true);
  });

  it('refuses a corrupt or modified backup', async () => {
    const p = new LocalKeyProvider({ home: join(home, 'a'), scrypt: FAST });
    await p.createKey();
    const file = join(home, 'backup.json');
    await p.backup(file, 'pw');
    const r = new LocalKeyProvider({ home: join(home, 'c'), scrypt: FAST });
    const doc = JSON.parse(readFileSync(file, 'utf8'));
    writeFileSync(file + '.bad', JSON.stringify({ ...doc, data: 'AAAA' }));
    expect(await codeOf(() => r.restore(file + '.bad', 'pw'))).toBe('ERR_KEYSTORE_PASSPHRASE');
    const d = Buffer.from(doc.data, 'base64');
    d[d.length - 1]! ^= 1;
    writeFileSync(file + '.bad', JSON.stringify({ ...doc, data: d.toString('base64') }));
    expect(await codeOf(() => r.restore(file + '.bad', 'pw'))).toBe('ERR_KEYSTORE_PASSPHRASE');
    writeFileSync(file + '.bad', JSON.stringify({ ...doc, kdf: { ...doc.kdf, n: 3 } }));
    expect(await codeOf(() => r.restore(file + '.bad', 'pw'))).toBe('ERR_KEYSTORE_CORRUPT');
    writeFileSync(file + '.bad', '{"format":"nope"}');
    expect(await codeOf(() => r.restore(file + '.bad', 'pw'))).toBe('ERR_KEYSTORE_CORRUPT');
    expect(await codeOf(() => r.restore(join(home, 'missing.json'), 'pw'))).toBe('ERR_KEYSTORE_IO');
    expect(existsSync(r.keystorePath)).toBe(false); // nothing was created by the failed restores
  });

  it('refuses to replace a key with different material under the same id (nothing written)', async () => {
    const p = new LocalKeyProvider({ home: join(home, 'a'), scrypt: FAST });
    const ref = await p.createKey();
    const file = join(home, 'backup.json');
    await p.backup(file, 'pw');
    // Another keystore that holds a different KEK under the same id, wrapped the documented way:
    // IV 12 ‖ AES-256-GCM(master, KEK) ‖ tag 16 with AAD "vmseal keystore v1 key <id>".
    const q = new LocalKeyProvider({ home: join(home, 'b') });
    await q.init();
    const master = Buffer.from(readFileSync(q.masterKeyPath, 'utf8').trim().split(' ')[1]!, 'base64');
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', master, iv);
    c.setAAD(Buffer.from(`vmseal keystore v1 key ${ref.keyId}`));
    const ct = Buffer.concat([c.update(Buffer.alloc(32, 3)), c.final()]);
    const doc = JSON.parse(readFileSync(q.keystorePath, 'utf8'));
    doc.keys.push({
      keyId: ref.keyId,
      name: null,
      created: new Date().toISOString(),
      state: 'active',
      wrapped: Buffer.concat([iv, ct, c.getAuthTag()]).toString('base64'),
    });
    writeFileSync(q.keystorePath, JSON.stringify(doc));
    expect((await new LocalKeyProvider({ home: join(home, 'b') }).getKey(ref.keyId)).equals(Buffer.alloc(32, 3))).toBe(true);
    const before = readFileSync(q.keystorePath);
    const e = (await new LocalKeyProvider({ home: join(home, 'b'), scrypt: FAST }).restore(file, 'pw').catch((x) => x)) as KeyError;
    expect(e.code).toBe('ERR_KEYSTORE_CONFLICT');
    expect(e.keyId).toBe(ref.keyId);
    expect(readFileSync(q.keystorePath).equals(before)).toBe(true);
  });
});

describe('retired keys and the disk a key was made for', () => {
  it('records diskId, retires, refuses retired keys unless allowed, and writes keystore version 2 only when needed', async () => {
    const home = mkdtempSync(join(tmpdir(), 'vmseal-retire-'));
    try {
      const p = new LocalKeyProvider({ home });
      const shared = await p.createKey();
      expect(JSON.parse(readFileSync(p.keystorePath, 'utf8')).version).toBe(1);
      const own = await p.createKey({ diskId: 'ab'.repeat(16) });
      expect(JSON.parse(readFileSync(p.keystorePath, 'utf8')).version).toBe(2);
      expect(await p.keyOwner(own.keyId)).toBe('ab'.repeat(16));
      expect(await p.keyOwner(shared.keyId)).toBeUndefined();
      const kek = await p.getKey(own.keyId);
      await p.retireKey(own.keyId);
      await p.retireKey(own.keyId); // idempotent
      const err = await p.getKey(own.keyId).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toMatchObject({ code: 'ERR_KEY_RETIRED', keyId: own.keyId, providerId: 'local' });
      expect((await new LocalKeyProvider({ home, allowRetired: true }).getKey(own.keyId)).equals(kek)).toBe(true);
      expect((await p.list()).find((k) => k.keyId === own.keyId)).toMatchObject({ state: 'retired', diskId: 'ab'.repeat(16) });
      await p.destroyKey(own.keyId);
      expect((await p.list()).find((k) => k.keyId === own.keyId)).toMatchObject({ state: 'destroyed' });
      await expect(p.createKey({ diskId: 'a b' })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
  });
});

describe('backups of retired keys', () => {
  it('carry retired keys and disk ids (version 2) and restore them retired; a keystore without either still writes version 1', async () => {
    const root = mkdtempSync(join(tmpdir(), 'vmseal-backup-v2-'));
    try {
      const scrypt = { n: 16, r: 1, p: 1 };
      const a = new LocalKeyProvider({ home: join(root, 'a'), scrypt });
      const shared = await a.createKey();
      await a.backup(join(root, 'v1.json'), 'backup passphrase');
      expect(JSON.parse(readFileSync(join(root, 'v1.json'), 'utf8')).version).toBe(1);

      const own = await a.createKey({ diskId: 'cd'.repeat(16) });
      await a.retireKey(own.keyId);
      const kek = await new LocalKeyProvider({ home: join(root, 'a'), allowRetired: true }).getKey(own.keyId);
      expect(await a.backup(join(root, 'v2.json'), 'backup passphrase')).toEqual({ keys: 2 });
      expect(JSON.parse(readFileSync(join(root, 'v2.json'), 'utf8')).version).toBe(2);

      const b = new LocalKeyProvider({ home: join(root, 'b'), scrypt });
      expect(await b.restore(join(root, 'v2.json'), 'backup passphrase')).toEqual({ added: 2, unchanged: 0 });
      expect((await b.list()).find((k) => k.keyId === own.keyId)).toMatchObject({ state: 'retired', diskId: 'cd'.repeat(16) });
      await expect(b.getKey(own.keyId)).rejects.toMatchObject({ code: 'ERR_KEY_RETIRED' });
      expect((await new LocalKeyProvider({ home: join(root, 'b'), allowRetired: true }).getKey(own.keyId)).equals(kek)).toBe(true);
      expect(await b.getKey(shared.keyId)).toHaveLength(32);
      // The version-1 backup still restores.
      const c = new LocalKeyProvider({ home: join(root, 'c'), scrypt });
      expect(await c.restore(join(root, 'v1.json'), 'backup passphrase')).toEqual({ added: 1, unchanged: 0 });
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
