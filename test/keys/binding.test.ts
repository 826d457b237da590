import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  computeAuthenticator,
  verifyAuthenticator,
  encodeBindingParams,
  generateDek,
  sealDek,
  unlockKeySafe,
  KeySafe,
  type BindingParams,
} from '../../src/keys/index.js';
import { FakeProvider, codeOf } from './helpers.js';

const fixture = JSON.parse(readFileSync(fileURLToPath(new URL('../fixtures/keysafe/binding.json', import.meta.url)), 'utf8'));

const params: BindingParams = { cipher: 'aes-256-xts', dataUnitSize: 512, capacity: 10n * 2n ** 30n, diskId: 'disk-A' };

describe('binding authenticator', () => {
  it('matches the known-answer vector', () => {
    for (const v of fixture.vectors) {
      const dek = Buffer.from(v.dekHex, 'hex');
      expect(encodeBindingParams(v.params).toString('hex')).toBe(v.messageHex);
      expect(computeAuthenticator(dek, v.params)).toBe(v.authenticator);
      verifyAuthenticator(dek, v.params, v.authenticator);
      // capacity as number or bigint is the same value
      expect(computeAuthenticator(dek, { ...v.params, capacity: BigInt(v.params.capacity) })).toBe(v.authenticator);
    }
  });

  it('encodes extra fields as the spec says: sorted by name, UTF-8 values with their byte length', () => {
    // Built from docs/format.md's words, field by field, apart from the encoder.
    const field = (name: string, value: string): Buffer => {
      const v = Buffer.from(value, 'utf8');
      const n = Buffer.alloc(4);
      n.writeUInt32BE(v.length);
      return Buffer.concat([Buffer.from(`${name}\0`, 'ascii'), n, v]);
    };
    const extra = { zeta: 'ünïcödé 💾', empty: '', formatVersion: '2', long: 'x'.repeat(70000) };
    const wanted = Buffer.concat([
      Buffer.from('vmseal binding v1\0', 'ascii'),
      field('cipher', 'aes-256-xts'),
      field('dataUnitSize', '512'),
      field('capacity', '10737418240'),
      field('diskId', 'disk-A'),
      field('empty', ''),
      field('formatVersion', '2'),
      field('long', 'x'.repeat(70000)),
      field('zeta', 'ünïcödé 💾'),
    ]);
    expect(encodeBindingParams({ ...params, extra }).equals(wanted)).toBe(true);
  });

  it('is descriptor-safe: "v1." and 43 base64url characters', () => {
    const a = computeAuthenticator(generateDek(), params);
    expect(a).toMatch(/^v1\.[A-Za-z0-9_-]{43}$/);
  });

  it('detects every changed parameter', () => {
    const dek = generateDek();
    const auth = computeAuthenticator(dek, params);
    verifyAuthenticator(dek, params, auth);
    const changed: BindingParams[] = [
      { ...params, dataUnitSize: 4096 },
      { ...params, capacity: 10n * 2n ** 30n + 512n },
      { ...params, diskId: 'disk-B' },
      { ...params, extra: { subformat: 'monolithicSparse' } },
    ];
    for (const p of changed) expect(() => verifyAuthenticator(dek, p, auth)).toThrowError(expect.objectContaining({ code: 'ERR_BINDING' }));
    // a cipher change needs a key of the other length: also ERR_BINDING
    expect(() => verifyAuthenticator(dek, { ...params, cipher: 'aes-128-xts' }, auth)).toThrowError(expect.objectContaining({ code: 'ERR_BINDING' }));
    const dek128 = generateDek('aes-128-xts');
    const a128 = computeAuthenticator(dek128, { ...params, cipher: 'aes-128-xts' });
    expect(() => verifyAuthenticator(Buffer.concat([dek128, dek128]), params, a128)).toThrowError(expect.objectContaining({ code: 'ERR_BINDING' }));
    // extra fields are order-independent
    const withExtra = computeAuthenticator(dek, { ...params, extra: { a: '1', b: '2' } });
    verifyAuthenticator(dek, { ...params, extra: { b: '2', a: '1' } }, withExtra);
  });

  it('detects every flipped bit of the authenticator and malformed text', () => {
    const dek = generateDek();
    const auth = computeAuthenticator(dek, params);
    for (let i = 0; i < auth.length; i++) {
      for (let bit = 0; bit < 7; bit++) {
        const t = auth.slice(0, i) + String.fromCharCode(auth.charCodeAt(i) ^ (1 << bit)) + auth.slice(i + 1);
        expect(() => verifyAuthenticator(dek, params, t)).toThrowError(expect.objectContaining({ code: 'ERR_BINDING' }));
      }
    }
    for (const bad of ['', 'v1.', auth + 'A', auth.slice(0, -1), 'v2' + auth.slice(2), auth.replace('v1.', 'v1:')]) {
      expect(() => verifyAuthenticator(dek, params, bad)).toThrowError(expect.objectContaining({ code: 'ERR_BINDING' }));
    }
  });

  it('detects a KeySafe copied from another disk', async () => {
    const p = new FakeProvider();
    const dekA = generateDek();
    const dekB = generateDek();
    const paramsB = { ...params, diskId: 'disk-B' };
    const authA = computeAuthenticator(dekA, params);
    const ksB = await sealDek(dekB, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    computeAuthenticator(dekB, paramsB);
    // disk A's descriptor with disk B's KeySafe pasted in
    const opened = await unlockKeySafe(ksB, { providers: [p] });
    expect(() => verifyAuthenticator(opened.key, params, authA)).toThrowError(expect.objectContaining({ code: 'ERR_BINDING' }));
  });

  it('rejects bad parameters with ERR_INVALID_ARGUMENT', () => {
    const dek = generateDek();
    const bad: unknown[] = [
      null,
      { ...params, cipher: 'aes-256-cbc' },
      { ...params, dataUnitSize: 1000 },
      { ...params, dataUnitSize: 256 },
      { ...params, capacity: -1 },
      { ...params, capacity: 1.5 },
      { ...params, diskId: '' },
      { ...params, extra: { cipher: 'x' } },
      { ...params, extra: { 'a b': 'x' } },
      { ...params, extra: { a: 1 } },
    ];
    for (const p of bad) expect(() => computeAuthenticator(dek, p as BindingParams)).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => computeAuthenticator('key' as never, params)).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('tamper detection of a stored KeySafe and authenticator', () => {
  it('every single-bit flip of the KeySafe text is an error or opens the same DEK (never garbage)', async () => {
    const p = new FakeProvider('kms');
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    const auth = computeAuthenticator(dek, params);
    const accepted: number[] = [];
    for (let i = 0; i < text.length; i++) {
      for (let bit = 0; bit < 7; bit++) {
        const t = text.slice(0, i) + String.fromCharCode(text.charCodeAt(i) ^ (1 << bit)) + text.slice(i + 1);
        let key: Buffer | undefined;
        try {
          key = (await unlockKeySafe(t, { providers: [p] })).key;
        } catch (err) {
          expect(['ERR_KEYSAFE', 'ERR_WRONG_KEY', 'ERR_NO_KEY', 'ERR_DISK_LOCKED', 'ERR_UNSUPPORTED_LOCKER']).toContain((err as { code: string }).code);
          continue;
        }
        expect(key.equals(dek)).toBe(true);
        verifyAuthenticator(key, params, auth);
        accepted.push(i);
      }
    }
    // the only harmless flips are letter case in the case-insensitive prefix and type names
    for (const i of accepted) expect(/[a-z]/i.test(text[i]!) && i < 'vmware:key/list/(pair/(fqid'.length).toBe(true);
  });

  it('every single-bit flip of the locked data is ERR_WRONG_KEY (MAC)', async () => {
    const p = new FakeProvider('kms');
    const dek = generateDek();
    const text = await sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: p }] });
    const pair = KeySafe.parse(text).pairs[0]!;
    const prefix = text.slice(0, text.lastIndexOf(',') + 1);
    for (let i = 0; i < pair.locked.length; i++) {
      for (let bit = 0; bit < 8; bit++) {
        const locked = Buffer.from(pair.locked);
        locked[i]! ^= 1 << bit;
        const escaped = [...Buffer.from(locked.toString('base64'))]
          .map((b) => (/[A-Za-z0-9]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : '%' + b.toString(16)))
          .join('');
        expect(await codeOf(() => unlockKeySafe(`${prefix}${escaped}))`, { providers: [p] }))).toBe('ERR_WRONG_KEY');
      }
    }
  });
});
