// Locked data of KeySafe pairs: vmseal's encrypt-then-MAC provider lockers, the MAC-over-plaintext
// lockers it still reads (old provider lockers, VMware phrase lockers), and one failure for all.
import { describe, it, expect } from 'vitest';
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { generateDek, sealDek, unlockKeySafe, describeKeySafe, KeySafe, KeyError } from '../../src/keys/index.js';
import { makeFqidLocator, makeList, makePair, makePhraseLocator } from '../../src/keys/keysafe.js';
import { ETM_MAC_NAME, lockDict, pkcs7PaddingCheck, unlockDict } from '../../src/keys/locked-data.js';
import { serializeKeyDict } from '../../src/keys/dict.js';
import { deriveKek } from '../../src/keys/kdf.js';
import { FakeProvider, vectors } from './helpers.js';

/** The two keys of an encrypt-then-MAC locker, derived here independently of the implementation. */
function etmKeys(kek: Buffer): { enc: Buffer; mac: Buffer } {
  const derive = (purpose: string) => Buffer.from(hkdfSync('sha256', kek, Buffer.alloc(0), `vmseal locker VMSEAL-ETM-HMAC-SHA-256 ${purpose}`, 32));
  return { enc: derive('encryption'), mac: derive('authentication') };
}

/** CBC without automatic padding: `padded` must already be whole blocks. */
function cbcRaw(key: Buffer, iv: Buffer, padded: Buffer): Buffer {
  const c = createCipheriv('aes-256-cbc', key.subarray(0, 32), iv);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(padded), c.final()]);
}

function lockedOfText(text: string): Buffer {
  return KeySafe.parse(text).pairs[0]!.locked;
}

function fqidSafe(providerId: string, keyId: string, mac: 'HMAC-SHA-256' | typeof ETM_MAC_NAME, locked: Buffer): string {
  return KeySafe.from(makeList([makePair(makeFqidLocator(providerId, keyId), mac, locked)])).toString();
}

async function failureOf(p: Promise<unknown>): Promise<KeyError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(KeyError);
  return err as KeyError;
}

describe('vmseal provider lockers: encrypt-then-MAC (VMSEAL-ETM-HMAC-SHA-256)', () => {
  it('sealDek writes the new MAC name, and the layout is IV ‖ CBC(encKey) ‖ HMAC(macKey, IV ‖ ciphertext)', async () => {
    const p = new FakeProvider('kms1');
    const dek = generateDek('aes-256-xts');
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    const keyId = [...p.keys.keys()][0]!;
    expect(text).toContain(',VMSEAL%2dETM%2dHMAC%2dSHA%2d256,');
    expect(describeKeySafe(text)).toEqual([{ index: 0, kind: 'provider', lockerType: 'fqid', providerId: 'kms1', keyId, mac: 'VMSEAL-ETM-HMAC-SHA-256' }]);

    const kek = p.keys.get(keyId)!;
    const locked = lockedOfText(text);
    expect(locked.length).toBe(16 + 128 + 32); // IV, PKCS#7 of the 124-byte dict, HMAC-SHA-256
    const iv = locked.subarray(0, 16);
    const body = locked.subarray(16, locked.length - 32);
    const tag = locked.subarray(locked.length - 32);
    const { enc, mac } = etmKeys(kek);
    expect(createHmac('sha256', mac).update(iv).update(body).digest().equals(tag)).toBe(true);
    const d = createDecipheriv('aes-256-cbc', enc, iv);
    const dict = Buffer.concat([d.update(body), d.final()]);
    expect(dict.equals(serializeKeyDict('XTS-AES-256', dek))).toBe(true);
    // the KEK itself is no longer the CBC key (separate derived keys)
    const wrong = createDecipheriv('aes-256-cbc', kek, iv);
    wrong.setAutoPadding(false);
    expect(Buffer.concat([wrong.update(body), wrong.final()]).equals(dict)).toBe(false);

    const r = await unlockKeySafe(text, { providers: [p] });
    expect(r.key.equals(dek)).toBe(true);
  });

  it('a flipped ciphertext, IV or tag byte is refused before decryption (ERR_WRONG_KEY)', async () => {
    const kek = randomBytes(32);
    const dict = serializeKeyDict('XTS-AES-256', generateDek());
    const locked = lockDict(kek, ETM_MAC_NAME, dict);
    expect(unlockDict(kek, ETM_MAC_NAME, locked)!.equals(dict)).toBe(true);
    for (const at of [0, 15, 16, locked.length - 33, locked.length - 1]) {
      const bad = Buffer.from(locked);
      bad[at]! ^= 1;
      expect(unlockDict(kek, ETM_MAC_NAME, bad), `byte ${at}`).toBeUndefined();
    }
    // an old-format name on new-format data does not open it either (no downgrade)
    expect(unlockDict(kek, 'HMAC-SHA-256', locked)).toBeUndefined();
  });
});

describe('old-format lockers still open', () => {
  for (const v of vectors.vmsealFqid) {
    it(`the stored vmseal provider-locker vector (HMAC-SHA-256 over the plaintext) unlocks: ${v.keyId}`, async () => {
      expect(v.keySafe).toContain(',HMAC%2dSHA%2d256,');
      const p = new FakeProvider(v.providerId);
      p.keys.set(v.keyId, Buffer.from(v.kekHex, 'hex'));
      const r = await unlockKeySafe(v.keySafe, { providers: [p] });
      expect(r.key.equals(Buffer.from(Array.from({ length: 64 }, (_, i) => i)))).toBe(true);
    });
  }

  it('an old-format provider locker written by lockDict(HMAC-SHA-256) unlocks through its provider', async () => {
    const p = new FakeProvider('old');
    const ref = await p.createKey();
    const dek = generateDek('aes-128-xts');
    const text = fqidSafe('old', ref.keyId, 'HMAC-SHA-256', lockDict(p.keys.get(ref.keyId)!, 'HMAC-SHA-256', serializeKeyDict('XTS-AES-128', dek)));
    const r = await unlockKeySafe(text, { providers: [p] });
    expect(r.key.equals(dek)).toBe(true);
  });

  it('the public Workstation phrase lockers (HMAC-SHA-1) unlock', async () => {
    for (const v of vectors.john.slice(0, 2)) {
      const [, , , , , rounds, saltHex, dataHex] = v.hash.split('$');
      const kek = await deriveKek(Buffer.from(v.password, 'utf8'), { name: 'PBKDF2-HMAC-SHA-1', rounds: Number(rounds), salt: Buffer.from(saltHex!, 'hex') });
      const dict = unlockDict(kek, 'HMAC-SHA-1', Buffer.from(dataHex!, 'hex'));
      expect(dict?.toString('latin1')).toBe(v.dict);
    }
  });
});

describe('bad padding and bad MAC: one outcome', () => {
  const dict = serializeKeyDict('XTS-AES-256', Buffer.alloc(64, 7)); // 124 bytes: 4 bytes of padding
  const kek = Buffer.alloc(32, 0x42);
  const iv = Buffer.alloc(16, 0x11);

  /** MAC-over-plaintext locked data with a chosen padded plaintext (the MAC is over `macOver`). */
  function legacyLocked(padded: Buffer, macOver: Buffer, hash: 'sha1' | 'sha256', key: Buffer = kek): Buffer {
    return Buffer.concat([iv, cbcRaw(key, iv, padded), createHmac(hash, key).update(macOver).digest()]);
  }
  const goodPadding = Buffer.concat([dict, Buffer.alloc(4, 4)]);
  const badPaddings = [
    Buffer.concat([dict, Buffer.from([4, 4, 3, 4])]), // one wrong byte in the pad
    Buffer.concat([dict, Buffer.from([0, 0, 0, 0])]), // pad length 0
    Buffer.concat([dict, Buffer.from([4, 4, 4, 17])]), // pad length over a block
    Buffer.concat([dict, Buffer.from([4, 4, 4, 0x80])]),
  ];

  for (const [macName, hash] of [
    ['HMAC-SHA-256', 'sha256'],
    ['HMAC-SHA-1', 'sha1'],
  ] as const) {
    it(`${macName} (MAC over the plaintext): bad padding, bad MAC and both give the same undefined`, () => {
      expect(unlockDict(kek, macName, legacyLocked(goodPadding, dict, hash))!.equals(dict)).toBe(true);
      const badMac = legacyLocked(goodPadding, dict, hash);
      badMac[badMac.length - 1]! ^= 1;
      expect(unlockDict(kek, macName, badMac)).toBeUndefined();
      for (const padded of badPaddings) {
        // The MAC is right for the dict: only the padding is wrong.
        expect(unlockDict(kek, macName, legacyLocked(padded, dict, hash))).toBeUndefined();
        // Both wrong.
        expect(unlockDict(kek, macName, legacyLocked(padded, Buffer.from('x'), hash))).toBeUndefined();
      }
    });
  }

  it('through unlockKeySafe: a provider locker with bad padding and one with a bad MAC fail with the identical code and message', async () => {
    const p = new FakeProvider('kms');
    p.keys.set('k', kek);
    const badMac = legacyLocked(goodPadding, dict, 'sha256');
    badMac[badMac.length - 1]! ^= 1;
    const mac = await failureOf(unlockKeySafe(fqidSafe('kms', 'k', 'HMAC-SHA-256', badMac), { providers: [p] }));
    expect(mac.code).toBe('ERR_WRONG_KEY');
    for (const padded of badPaddings) {
      const pad = await failureOf(unlockKeySafe(fqidSafe('kms', 'k', 'HMAC-SHA-256', legacyLocked(padded, dict, 'sha256')), { providers: [p] }));
      expect(pad.code).toBe(mac.code);
      expect(pad.message).toBe(mac.message);
      expect(pad.attempts).toEqual(mac.attempts);
    }

    // New format: a tag that verifies over a ciphertext whose padding is bad, and a bad tag.
    const { enc, mac: macKey } = etmKeys(kek);
    const body = cbcRaw(enc, iv, badPaddings[0]!);
    const etmBadPad = Buffer.concat([iv, body, createHmac('sha256', macKey).update(iv).update(body).digest()]);
    const etmBadMac = lockDict(kek, ETM_MAC_NAME, dict);
    etmBadMac[20]! ^= 1;
    const e1 = await failureOf(unlockKeySafe(fqidSafe('kms', 'k', ETM_MAC_NAME, etmBadPad), { providers: [p] }));
    const e2 = await failureOf(unlockKeySafe(fqidSafe('kms', 'k', ETM_MAC_NAME, etmBadMac), { providers: [p] }));
    expect([e1.code, e2.code]).toEqual(['ERR_WRONG_KEY', 'ERR_WRONG_KEY']);
    expect(e1.message).toBe(e2.message);
    expect(e1.message).toBe(mac.message);
  });

  it('a phrase locker (Workstation format) with bad padding and one with a bad MAC fail alike', async () => {
    const kdf = { name: 'PBKDF2-HMAC-SHA-1' as const, rounds: 1000, salt: Buffer.alloc(16, 3) };
    const pkek = await deriveKek(Buffer.from('pw', 'utf8'), kdf);
    const text = (locked: Buffer) => KeySafe.from(makeList([makePair(makePhraseLocator('AAECAwQFBgc=', kdf), 'HMAC-SHA-1', locked)])).toString();
    const ok = legacyLocked(goodPadding, dict, 'sha1', pkek);
    expect((await unlockKeySafe(text(ok), { passphrase: 'pw' })).key.equals(Buffer.alloc(64, 7))).toBe(true);
    const badMac = Buffer.from(ok);
    badMac[badMac.length - 1]! ^= 1;
    const a = await failureOf(unlockKeySafe(text(badMac), { passphrase: 'pw' }));
    const b = await failureOf(unlockKeySafe(text(legacyLocked(badPaddings[0]!, dict, 'sha1', pkek)), { passphrase: 'pw' }));
    expect(a.code).toBe('ERR_WRONG_KEY');
    expect(b.code).toBe(a.code);
    expect(b.message).toBe(a.message);
  });
});

describe('pkcs7PaddingCheck (constant time: no early exit, a verdict and a length)', () => {
  it('accepts exactly the valid paddings of a block-aligned buffer', () => {
    for (let pad = 0; pad < 256; pad++) {
      for (const filler of [0, pad, pad ^ 1]) {
        const b = Buffer.alloc(32, 0xaa);
        b.fill(filler, 32 - Math.min(pad, 16), 31);
        b[31] = pad;
        const expectValid = pad >= 1 && pad <= 16 && (pad === 1 || filler === pad);
        const r = pkcs7PaddingCheck(b);
        expect(r.valid, `pad ${pad} filler ${filler}`).toBe(expectValid ? 1 : 0);
        if (expectValid) expect(r.length).toBe(32 - pad);
      }
    }
  });
});
