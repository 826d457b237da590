// A KeySafe that contains "CID" by chance (or any unsafe text) is sealed again until it is clean.
import { describe, it, expect, vi } from 'vitest';

const calls = { seal: 0 };
vi.mock('../../src/keys/index.js', async (importOriginal) => {
  const real = await importOriginal<typeof import('../../src/keys/index.js')>();
  return {
    ...real,
    sealDek: async (...args: Parameters<typeof real.sealDek>) => {
      calls.seal++;
      const text = await real.sealDek(...args);
      // The first two seals "happen" to contain the substring qemu would mistake for a header field.
      return calls.seal <= 2 ? text.replace(/\)$/, 'CID)') : text;
    },
  };
});

const { makeEncryptionParams, generateDek } = await import('../../src/disk/keying.js');

describe('re-sealing', () => {
  it('seals again until the KeySafe is safe in a descriptor', async () => {
    const dek = generateDek('aes-256-xts');
    const p = await makeEncryptionParams(dek, {
      cipher: 'aes-256-xts',
      unitSize: 512,
      capacity: 1 << 20,
      lockers: [{ kind: 'passphrase', passphrase: 'pw', rounds: 1000 }],
    });
    expect(calls.seal).toBe(3);
    expect(p.keySafe).not.toContain('CID');
    expect(p.authenticator).not.toContain('CID');
  });
});
