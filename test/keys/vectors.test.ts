import { describe, it, expect } from 'vitest';
import { createCipheriv, createDecipheriv, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { unlockKeySafe, describeKeySafe, KeySafe } from '../../src/keys/index.js';
import { deriveKek, parsePass2KeyDict } from '../../src/keys/kdf.js';
import { vectors, keySafeFromJohn, codeOf, FakeProvider, esc } from './helpers.js';

function keyOfDict(dict: string): Buffer {
  return Buffer.from(/key=(.*)$/.exec(dict)![1]!.replace(/%3d/g, '='), 'base64');
}

describe('public Workstation vectors', () => {
  for (const v of vectors.john) {
    it(`John the Ripper vector for password ${JSON.stringify(v.password)} unlocks to its dict`, async () => {
      const text = keySafeFromJohn(v.hash);
      expect(KeySafe.parse(text).toString()).toBe(text);
      const r = await unlockKeySafe(text, { passphrase: v.password });
      expect(r.type).toBe('key');
      expect(r.cipher).toBe('AES-256');
      expect(r.key.equals(keyOfDict(v.dict))).toBe(true);
      expect(r.unlockedBy).toMatchObject({ kind: 'passphrase', index: 0, kdf: 'PBKDF2-HMAC-SHA-1' });
      const info = describeKeySafe(text);
      expect(info).toEqual([
        { index: 0, kind: 'passphrase', lockerType: 'phrase', id: 'AAECAwQFBgc=', mac: 'HMAC-SHA-1', kdf: { name: 'PBKDF2-HMAC-SHA-1', rounds: 10000 } },
      ]);
    });

    it(`John the Ripper vector for ${JSON.stringify(v.password)} refuses a wrong password with ERR_WRONG_KEY`, async () => {
      expect(await codeOf(() => unlockKeySafe(keySafeFromJohn(v.hash), { passphrase: v.password + 'x' }))).toBe('ERR_WRONG_KEY');
    });
  }

  it('the hashcat 27400 vector decrypts its first block to "type=key:cipher="', async () => {
    const v = vectors.hashcat[0]!;
    const [, , , rounds, saltHex, dataHex] = v.hash.split('$');
    const kdf = parsePass2KeyDict(
      `pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=${rounds}:salt=${Buffer.from(saltHex!, 'hex').toString('base64').replace(/=/g, '%3d')}`,
      0,
    );
    const kek = await deriveKek(Buffer.from(v.password, 'utf8'), kdf);
    const data = Buffer.from(dataHex!, 'hex');
    const d = createDecipheriv('aes-256-cbc', kek, data.subarray(0, 16));
    d.setAutoPadding(false);
    expect(d.update(data.subarray(16, 32)).toString('latin1')).toBe(v.firstBlock);
  });

  for (const v of vectors.vmsealFqid) {
    it('the vmseal provider-locker known-answer vector unlocks with its KEK', async () => {
      const p = new FakeProvider(v.providerId);
      p.keys.set(v.keyId, Buffer.from(v.kekHex, 'hex'));
      expect(KeySafe.parse(v.keySafe).toString()).toBe(v.keySafe);
      const r = await unlockKeySafe(v.keySafe, { providers: [p] });
      expect(r.cipher).toBe('XTS-AES-256');
      expect(r.key.equals(keyOfDict(v.dict))).toBe(true);
      expect(r.key.equals(Buffer.from(Array.from({ length: 64 }, (_, i) => i)))).toBe(true);
      p.keys.set(v.keyId, Buffer.alloc(32, 0x12));
      expect(await codeOf(() => unlockKeySafe(v.keySafe, { providers: [p] }))).toBe('ERR_WRONG_KEY');
    });
  }

  it('reads the cipher=XTS-AES-256 phrase variant: 64-byte KEK, CBC with its first half, HMAC with all of it', async () => {
    const salt = randomBytes(16);
    const kek = pbkdf2Sync('variant', salt, 1000, 64, 'sha256');
    const key = randomBytes(32);
    const dict = Buffer.from(`type=key:cipher=AES-256:key=${key.toString('base64').replace(/=/g, '%3d')}`);
    const iv = randomBytes(16);
    const c = createCipheriv('aes-256-cbc', kek.subarray(0, 32), iv);
    const locked = Buffer.concat([iv, c.update(dict), c.final(), createHmac('sha256', kek).update(dict).digest()]);
    const p2k = `pass2key=PBKDF2-HMAC-SHA-256:cipher=XTS-AES-256:rounds=1000:salt=${salt.toString('base64').replace(/=/g, '%3d')}`;
    const text = `vmware:key/list/(pair/(phrase/${esc('abc=')}/${esc(p2k)},HMAC%2dSHA%2d256,${esc(locked.toString('base64'))}))`;
    const r = await unlockKeySafe(text, { passphrase: 'variant' });
    expect(r.key.equals(key)).toBe(true);
    expect(await codeOf(() => unlockKeySafe(text, { passphrase: 'other' }))).toBe('ERR_WRONG_KEY');
  });

  it('runs the KDF for at most 8 phrase lockers per unlock', async () => {
    const one = keySafeFromJohn(vectors.john[0]!.hash);
    const pair = one.slice('vmware:key/list/('.length, -1);
    const text = `vmware:key/list/(${Array(9).fill(pair).join(',')})`;
    const err = (await unlockKeySafe(text, { passphrase: 'wrong' }).catch((e) => e)) as { code: string; attempts: Array<{ code: string }> };
    expect(err.code).toBe('ERR_WRONG_KEY');
    expect(err.attempts.map((a) => a.code)).toEqual([...Array(8).fill('ERR_WRONG_KEY'), 'ERR_NO_KEY']);
  });

  it('a Workstation locker vmseal writes opens with an independent implementation of the JtR construction', async () => {
    const { sealDek } = await import('../../src/keys/index.js');
    const key = randomBytes(32);
    const text = await sealDek(key, { cipher: 'AES-256', lockers: [{ kind: 'passphrase', passphrase: 'openwall', kdf: 'workstation' }] });
    // Unescape by hand: KeySafe field (once), then the dict values (again).
    const m = /^vmware:key\/list\/\(pair\/\(phrase\/([A-Za-z0-9%]+)\/([A-Za-z0-9%]+),HMAC%2dSHA%2d1,([A-Za-z0-9%]+)\)\)$/.exec(text)!;
    expect(Buffer.from(decodeURIComponent(m[1]!), 'base64').length).toBe(8);
    const dict = decodeURIComponent(m[2]!);
    const d = /^pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=(\d+):salt=(.+)$/.exec(dict)!;
    expect(d[1]).toBe('10000');
    const salt = Buffer.from(decodeURIComponent(d[2]!), 'base64');
    expect(salt.length).toBe(16);
    const locked = Buffer.from(decodeURIComponent(m[3]!), 'base64');
    const kek = pbkdf2Sync('openwall', salt, 10000, 32, 'sha1');
    const dc = createDecipheriv('aes-256-cbc', kek, locked.subarray(0, 16));
    const plain = Buffer.concat([dc.update(locked.subarray(16, locked.length - 20)), dc.final()]);
    expect(plain.toString()).toBe(`type=key:cipher=AES-256:key=${key.toString('base64').replace(/=/g, '%3d')}`);
    expect(
      createHmac('sha1', kek)
        .update(plain)
        .digest()
        .equals(locked.subarray(locked.length - 20)),
    ).toBe(true);
    // and as a John the Ripper line, it is the same shape as the public vectors
    expect(locked.length).toBe(116);
  });
});
