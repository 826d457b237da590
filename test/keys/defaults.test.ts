import { describe, it, expect } from 'vitest';
import { PHRASE_DEFAULTS, KDF_LIMITS, sealDek, describeKeySafe, unlockKeySafe, generateDek } from '../../src/keys/index.js';

// The documented defaults (docs/keys.md, docs/format.md). These run the real costs once.
describe('default parameters', () => {
  it('are the documented numbers', () => {
    expect(PHRASE_DEFAULTS).toEqual({
      kdf: 'pbkdf2-sha256',
      pbkdf2Sha256Rounds: 600_000,
      scrypt: { n: 131072, r: 8, p: 1 },
      workstationRounds: 10_000,
      saltBytes: 16,
    });
    expect(KDF_LIMITS.maxPbkdf2Rounds).toBe(10_000_000);
    expect(KDF_LIMITS.maxScryptN).toBe(2 ** 20);
  });

  it('a passphrase locker without options is PBKDF2-HMAC-SHA-256, 600,000 rounds, HMAC-SHA-256', async () => {
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'passphrase', passphrase: 'pw' }] });
    expect(describeKeySafe(text)).toEqual([
      {
        index: 0,
        kind: 'passphrase',
        lockerType: 'phrase',
        id: expect.any(String),
        mac: 'HMAC-SHA-256',
        kdf: { name: 'PBKDF2-HMAC-SHA-256', rounds: 600_000 },
      },
    ]);
    expect((await unlockKeySafe(text, { passphrase: 'pw' })).key.equals(dek)).toBe(true);
  });

  it("kdf 'workstation' without options is PBKDF2-HMAC-SHA-1 with 10,000 rounds and HMAC-SHA-1; 'scrypt' stores n, r, p", async () => {
    const dek = generateDek();
    const text = await sealDek(dek, {
      cipher: 'aes-256-xts',
      lockers: [
        { kind: 'passphrase', passphrase: 'pw', kdf: 'workstation' },
        { kind: 'passphrase', passphrase: 'pw', kdf: 'scrypt' },
      ],
    });
    const [ws, sc] = describeKeySafe(text);
    expect(ws).toMatchObject({ mac: 'HMAC-SHA-1', kdf: { name: 'PBKDF2-HMAC-SHA-1', rounds: 10_000 } });
    expect(sc).toMatchObject({ mac: 'HMAC-SHA-256', kdf: { name: 'SCRYPT', n: 131072, r: 8, p: 1 } });
    // the salt is 16 bytes
    expect(text).toMatch(/salt%3d[A-Za-z0-9%]{22,80}%253d%253d/);
  });
});
