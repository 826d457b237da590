import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { KeySafe, KeySafeError, KEYSAFE_LIMITS, type KeyLocator } from '../../src/keys/index.js';
import { encodeField, decodeField, escapeBytes } from '../../src/keys/escape.js';
import { parseDict, serializeDict, parseKeyDict, serializeKeyDict } from '../../src/keys/dict.js';
import { makeList, makePair, makeFqidLocator, makePhraseLocator } from '../../src/keys/keysafe.js';
import { vectors, esc } from './helpers.js';
import { fuzzParams } from '../helpers/fuzz.js';

const B64_176 = Buffer.alloc(176, 1).toString('base64'); // IV 16 + 128 + HMAC-SHA-256 32
const LOCKED = esc(B64_176);
const PHRASE_DICT = esc('pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=10000:salt=' + esc16());
function esc16(): string {
  return Buffer.alloc(16, 2).toString('base64').replace(/=/g, '%3d');
}

describe('KeySafe grammar: round trips', () => {
  it('parses and re-serializes byte-exactly the govmomi strings', () => {
    for (const s of vectors.roundTrip) expect(KeySafe.parse(s).toString()).toBe(s);
  });

  it('decodes the govmomi strings to the right fields', () => {
    const [nul, raw, phrase, fqid, list, fqid2] = vectors.roundTrip.map((s) => KeySafe.parse(s).root);
    expect(nul).toMatchObject({ type: 'null', value: { value: '' } });
    expect(raw).toMatchObject({ type: 'rawkey', value: { value: 'test-key-data' } });
    expect(phrase).toMatchObject({ type: 'phrase', id: { value: 'passphrase-id' }, keyGenData: { value: 'salt-data' } });
    expect(fqid).toMatchObject({ type: 'fqid', id: { value: null }, keyServerId: { value: 'kmip-server' }, keyId: { value: 'key-12345' } });
    expect(list).toMatchObject({
      type: 'list',
      items: [
        { type: 'null', value: { value: '' } },
        { type: 'rawkey', value: { value: 'data' } },
      ],
    });
    expect(fqid2).toMatchObject({
      type: 'fqid',
      id: { value: 'my-unique-id' },
      keyServerId: { value: 'production-server' },
      keyId: { value: 'encryption-key-001' },
    });
  });

  it('round-trips a vSphere-style pair with a literal <VMWARE-NULL>, and mixed-case prefix and types', () => {
    const s = `vmware:key/list/(pair/(fqid/<VMWARE-NULL>/KMS/a4e7494f%2dda55%2d4917%2d9d90%2d560c5078866b,HMAC%2dSHA%2d256,${LOCKED}))`;
    const ks = KeySafe.parse(s);
    expect(ks.toString()).toBe(s);
    expect(ks.pairs[0]).toMatchObject({
      macName: 'HMAC-SHA-256',
      locker: { type: 'fqid', id: { value: null }, keyId: { value: 'a4e7494f-da55-4917-9d90-560c5078866b' } },
    });
    expect(ks.pairs[0]!.locked.length).toBe(176);
    const upper = `VMware:KEY/List/(PAIR/(FQID/<VMWARE-NULL>/KMS/k,HMAC%2dSHA%2d256,${LOCKED}))`;
    const u = KeySafe.parse(upper);
    expect(u.toString()).toBe(upper);
    expect(u.pairs.length).toBe(1);
  });

  it('builds what vmseal writes', () => {
    const ks = KeySafe.from(makeList([makePair(makeFqidLocator('local', 'k-1'), 'HMAC-SHA-256', Buffer.alloc(176, 1))]));
    expect(ks.toString()).toBe(`vmware:key/list/(pair/(fqid/<VMWARE-NULL>/local/k%2d1,HMAC%2dSHA%2d256,${LOCKED}))`);
    const phrase = makePhraseLocator('id=', { name: 'PBKDF2-HMAC-SHA-1', rounds: 10000, salt: Buffer.alloc(16, 2) });
    expect(KeySafe.from(phrase).toString()).toBe(`vmware:key/phrase/id%3d/${PHRASE_DICT}`);
    expect(PHRASE_DICT).toContain('%253d%253d'); // the salt's '=' escaped twice
  });
});

describe('escaping', () => {
  it('escapes every non-alphanumeric byte as lowercase %xx, and the special values as tokens', () => {
    expect(encodeField('a-b=c+d/e')).toBe('a%2db%3dc%2bd%2fe');
    expect(encodeField('å')).toBe('%c3%a5');
    expect(encodeField(null)).toBe('<VMWARE-NULL>');
    expect(encodeField('')).toBe('<VMWARE-EMPTYSTRING>');
    expect(decodeField('%3cVMWARE%2dNULL%3e', 0, 'f').value).toBeNull();
    expect(decodeField('%3cVMWARE%2dEMPTYSTRING%3e', 0, 'f').value).toBe('');
    expect(decodeField('%c3%a5', 0, 'f').value).toBe('å');
  });

  it('escapes each of the 256 byte values by the rule, also inside a view of a larger buffer', () => {
    const all = Buffer.alloc(258);
    for (let b = 0; b < 256; b++) all[b + 1] = b;
    const view = all.subarray(1, 257);
    const alnum = (b: number): boolean => (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
    const wanted = [...view].map((b) => (alnum(b) ? String.fromCharCode(b) : `%${b.toString(16).padStart(2, '0')}`)).join('');
    expect(escapeBytes(view)).toBe(wanted);
    expect(escapeBytes(new Uint8Array(0))).toBe('');
  });

  it('dict values: %, :, = and non-printables escaped; + and / literal', () => {
    expect(
      serializeDict([
        ['key', 'a+b/c='],
        ['x', 'p:q%r s'],
      ]),
    ).toBe('key=a+b/c%3d:x=p%3aq%25r%20s');
    expect([...parseDict('key=a+b/c%3d:x=p%3aq%25r%20s', 'd').entries()]).toEqual([
      ['key', 'a+b/c='],
      ['x', 'p:q%r s'],
    ]);
    const key = Buffer.alloc(64, 0xfb);
    const dict = serializeKeyDict('XTS-AES-256', key);
    expect(dict.toString()).toBe(`type=key:cipher=XTS-AES-256:key=${key.toString('base64').replace(/=/g, '%3d')}`);
    const back = parseKeyDict(dict);
    expect(back.cipher).toBe('XTS-AES-256');
    expect(back.key.equals(key)).toBe(true);
  });

  const badDicts: Array<[string, string]> = [
    ['', 'dict'],
    ['type=key:cipher=AES-256', 'dict'],
    ['type=key:cipher=AES-256:key=AAAA:extra=1', 'dict'],
    ['type=nokey:cipher=AES-256:key=' + Buffer.alloc(32).toString('base64').replace(/=/g, '%3d'), 'dict'],
    ['type=key:cipher=ROT-13:key=AAAA', 'cipher'],
    ['type=key:cipher=AES-256:key=' + Buffer.alloc(16).toString('base64').replace(/=/g, '%3d'), 'length'],
    ['type=key:cipher=AES-256:key=' + Buffer.alloc(32).toString('base64'), 'dict'], // raw '=' in a value
    ['type=key:cipher=AES-256:key=AAA*', 'base64'],
    ['type=key:type=key', 'dict'],
    ['type=key:=x', 'dict'],
    ['type=key:cipher=AES-256:key=%zz', 'dict'],
    ['type=key:cipher=AES-256:key=%3D', 'dict'],
  ];
  for (const [d, reason] of badDicts) {
    it(`refuses the key dict ${JSON.stringify(d.slice(0, 40))} (${reason})`, () => {
      expect(() => parseKeyDict(Buffer.from(d))).toThrowError(expect.objectContaining({ code: 'ERR_KEYSAFE', reason }));
    });
  }
});

describe('KeySafeError paths (reason and position)', () => {
  const pair = (locker: string, mac = 'HMAC%2dSHA%2d256', data = LOCKED) => `vmware:key/pair/(${locker},${mac},${data})`;
  const cases: Array<[string, string, string, number]> = [
    ['prefix', 'vmware:keys/null/a', 'prefix', 0],
    ['empty text', '', 'prefix', 0],
    ['unknown type', 'vmware:key/blob/a', 'type', 11],
    ['type without slash', 'vmware:key/null', 'syntax', 15],
    ['unescaped dash', 'vmware:key/rawkey/a-b', 'escape', 19],
    ['uppercase hex', 'vmware:key/rawkey/a%2Db', 'escape', 19],
    ['short escape', 'vmware:key/rawkey/a%2', 'escape', 19],
    ['escaped alphanumeric', 'vmware:key/rawkey/%41', 'escape', 18],
    ['invalid UTF-8', 'vmware:key/rawkey/%ff', 'utf8', 18],
    ['empty field', 'vmware:key/rawkey/', 'field', 18],
    ['bad token', 'vmware:key/rawkey/<VMWARE-NIL>', 'escape', 18],
    ['trailing text', 'vmware:key/rawkey/a/b', 'syntax', 19],
    ['phrase without keyGenData', 'vmware:key/phrase/a', 'syntax', 19],
    ['fqid with two fields', 'vmware:key/fqid/a/b', 'syntax', 19],
    ['list without (', 'vmware:key/list/null/a', 'syntax', 16],
    ['unclosed list', 'vmware:key/list/(null/a', 'syntax', 23],
    ['empty list', 'vmware:key/list/()', 'type', 17],
    ['list trailing comma', 'vmware:key/list/(null/a,)', 'type', 24],
    ['pair with a list locker', pair('list/(null/a)'), 'locker', 17],
    ['unknown MAC', pair('fqid/<VMWARE-NULL>/p/k', 'HMAC%2dMD5'), 'mac', 40],
    ['MAC case', pair('fqid/<VMWARE-NULL>/p/k', 'hmac%2dsha%2d256'), 'mac', 40],
    ['bad base64', pair('fqid/<VMWARE-NULL>/p/k', undefined, 'AAAA%2a'), 'base64', 57],
    ['non-canonical base64', pair('fqid/<VMWARE-NULL>/p/k', undefined, esc(B64_176.slice(0, -2) + 'B=')), 'base64', 57],
    ['short locked data', pair('fqid/<VMWARE-NULL>/p/k', undefined, esc(Buffer.alloc(48).toString('base64'))), 'length', 57],
    ['locked data not in blocks', pair('fqid/<VMWARE-NULL>/p/k', undefined, esc(Buffer.alloc(177).toString('base64'))), 'length', 57],
    ['MAC size mismatch', pair('fqid/<VMWARE-NULL>/p/k', 'HMAC%2dSHA%2d1'), 'length', 55],
    ['pair missing data', 'vmware:key/pair/(fqid/<VMWARE-NULL>/p/k,HMAC%2dSHA%2d256)', 'syntax', 56],
    ['fqid null key id', pair('fqid/<VMWARE-NULL>/p/<VMWARE-NULL>'), 'null-field', 17],
    ['fqid empty server id', pair('fqid/<VMWARE-NULL>/<VMWARE-EMPTYSTRING>/k'), 'empty-field', 17],
    ['phrase null id', pair(`phrase/<VMWARE-NULL>/${PHRASE_DICT}`), 'null-field', 17],
    ['phrase empty id', pair(`phrase/<VMWARE-EMPTYSTRING>/${PHRASE_DICT}`), 'empty-field', 17],
    ['phrase dict not a dict', pair('phrase/a/salt%2ddata'), 'dict', 17],
    ['phrase unknown KDF', pair(`phrase/a/${esc('pass2key=MD5:cipher=AES-256:rounds=1:salt=' + esc16())}`), 'kdf', 17],
    ['phrase rounds 0', pair(`phrase/a/${esc('pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=0:salt=' + esc16())}`), 'kdf', 17],
    ['phrase rounds huge', pair(`phrase/a/${esc('pass2key=PBKDF2-HMAC-SHA-256:cipher=AES-256:rounds=99999999:salt=' + esc16())}`), 'kdf', 17],
    ['phrase scrypt n not power of 2', pair(`phrase/a/${esc('pass2key=SCRYPT:cipher=AES-256:n=1000:r=8:p=1:salt=' + esc16())}`), 'kdf', 17],
    ['phrase scrypt too much memory', pair(`phrase/a/${esc('pass2key=SCRYPT:cipher=AES-256:n=1048576:r=32:p=1:salt=' + esc16())}`), 'kdf', 17],
    ['phrase cipher', pair(`phrase/a/${esc('pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-128:rounds=1:salt=' + esc16())}`), 'cipher', 17],
    ['phrase short salt', pair(`phrase/a/${esc('pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=1:salt=AAAA')}`), 'kdf', 17],
    ['phrase bad salt', pair(`phrase/a/${esc('pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=1:salt=A')}`), 'base64', 17],
    ['phrase extra entry', pair(`phrase/a/${esc('pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=1:n=2:salt=' + esc16())}`), 'dict', 17],
  ];
  for (const [name, text, reason, position] of cases) {
    it(`${name} → ${reason} at ${position}`, () => {
      let err: unknown;
      try {
        KeySafe.parse(text);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(KeySafeError);
      expect(err).toMatchObject({ code: 'ERR_KEYSAFE', reason, position });
      expect((err as Error).message).toMatch(new RegExp(`^Invalid KeySafe at offset ${position}: `));
    });
  }

  it('messages never echo field content', () => {
    try {
      KeySafe.parse('vmware:key/rawkey/SECRETKEYMATERIAL-x');
    } catch (e) {
      expect((e as Error).message).not.toContain('SECRET');
    }
    try {
      KeySafe.parse('vmware:key/rawkey/SECRETKEYMATERIAL(');
    } catch (e) {
      expect((e as Error).message).not.toContain('SECRET');
    }
  });

  it('bounds length, depth and list size', () => {
    expect(() => KeySafe.parse('vmware:key/rawkey/' + 'a'.repeat(KEYSAFE_LIMITS.maxLength))).toThrowError(expect.objectContaining({ reason: 'too-long' }));
    const deep = 'vmware:key/' + 'list/('.repeat(KEYSAFE_LIMITS.maxDepth + 1) + 'null/a' + ')'.repeat(KEYSAFE_LIMITS.maxDepth + 1);
    expect(() => KeySafe.parse(deep)).toThrowError(expect.objectContaining({ reason: 'too-deep' }));
    const ok = 'vmware:key/' + 'list/('.repeat(KEYSAFE_LIMITS.maxDepth) + 'null/a' + ')'.repeat(KEYSAFE_LIMITS.maxDepth);
    expect(KeySafe.parse(ok).toString()).toBe(ok);
    const wide = `vmware:key/list/(${Array(KEYSAFE_LIMITS.maxListItems + 1)
      .fill('null/a')
      .join(',')})`;
    expect(() => KeySafe.parse(wide)).toThrowError(expect.objectContaining({ reason: 'too-many-items' }));
    const fields = `vmware:key/ldap/${Array(KEYSAFE_LIMITS.maxFields + 1)
      .fill('a')
      .join('/')}`;
    expect(() => KeySafe.parse(fields)).toThrowError(expect.objectContaining({ reason: 'too-many-items' }));
    // a very deep input fails fast on depth, without a stack overflow
    const hostile = 'vmware:key/' + 'list/('.repeat(10_000);
    expect(() => KeySafe.parse(hostile)).toThrowError(expect.objectContaining({ reason: 'too-deep' }));
  });

  it('refuses a non-string', () => {
    expect(() => KeySafe.parse(5 as never)).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
  });
});

describe('property tests', () => {
  it("base64 over bytes equals Node's, and decoding is canonical", async () => {
    const { encodeBase64Bytes, decodeBase64Bytes, decodeBase64String } = await import('../../src/keys/base64.js');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 100 }), (bytes) => {
        const b64 = encodeBase64Bytes(bytes);
        expect(b64.toString('ascii')).toBe(Buffer.from(bytes).toString('base64'));
        if (bytes.length > 0) expect(decodeBase64Bytes(b64)!.equals(Buffer.from(bytes))).toBe(true);
      }),
    );
    fc.assert(
      fc.property(fc.string({ maxLength: 24 }), (s) => {
        const d = decodeBase64String(s);
        // accepted only if it is exactly the canonical encoding of what it decodes to
        if (d !== undefined) expect(d.toString('base64')).toBe(s);
      }),
      fuzzParams(102, 2000),
    );
  });

  it('canonicalBase64Length accepts exactly what decodeBase64String decodes, and gives its length', async () => {
    const { canonicalBase64Length, decodeBase64String } = await import('../../src/keys/base64.js');
    const same = (s: string): void => {
      expect(canonicalBase64Length(s)).toBe(decodeBase64String(s)?.length);
    };
    // Canonical encodings, then the same with one character changed (padding bits, '=' placement, alphabet).
    const b64ish = fc.string({ unit: fc.constantFrom(...'ABQgwEIcz09+/=-_ \n'), maxLength: 16 });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 70 }), fc.nat(), fc.constantFrom(...'AQgwEIcz09+/=-_ \n'), (bytes, at, ch) => {
        const text = Buffer.from(bytes).toString('base64');
        same(text);
        if (text.length > 0) {
          const i = at % text.length;
          same(text.slice(0, i) + ch + text.slice(i + 1));
        }
      }),
      fuzzParams(103, 3000),
    );
    fc.assert(fc.property(b64ish, same), fuzzParams(104, 3000));
    fc.assert(fc.property(fc.string({ maxLength: 24 }), same), fuzzParams(105, 1000));
  });

  it('dicts: serialize → parse is the identity for any values', () => {
    const name = fc.stringMatching(/^[A-Za-z][A-Za-z0-9]{0,7}$/);
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.tuple(name, fc.string({ maxLength: 12, unit: 'grapheme' })), { minLength: 1, maxLength: 5, selector: (t) => t[0] }),
        (entries) => {
          const text = serializeDict(entries);
          expect([...parseDict(text, 'd').entries()]).toEqual(entries);
        },
      ),
    );
  });

  it('refuses a lone surrogate in a field value', () => {
    expect(() => encodeField('a\uD800b')).toThrowError(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(encodeField('\uD83D\uDE00')).toBe('%f0%9f%98%80');
  });

  const value = fc.oneof(
    { weight: 1, arbitrary: fc.constant(null) },
    { weight: 1, arbitrary: fc.constant('') },
    { weight: 6, arbitrary: fc.string({ minLength: 1, maxLength: 12, unit: 'grapheme' }) },
  );
  const f = value.map((v) => ({ value: v, raw: encodeField(v) }));
  const leaf: fc.Arbitrary<KeyLocator> = fc.oneof(
    f.map((v) => ({ type: 'null' as const, spelling: 'null', value: v })),
    f.map((v) => ({ type: 'rawkey' as const, spelling: 'rawkey', value: v })),
    fc.tuple(f, f).map(([id, keyGenData]) => ({ type: 'phrase' as const, spelling: 'phrase', id, keyGenData })),
    fc.tuple(f, f, f).map(([id, keyServerId, keyId]) => ({ type: 'fqid' as const, spelling: 'fqid', id, keyServerId, keyId })),
    fc.tuple(fc.constantFrom('ldap' as const, 'script' as const, 'role' as const), fc.array(f, { minLength: 1, maxLength: 3 })).map(([type, fields]) => ({
      type,
      spelling: type,
      fields,
    })),
  );
  const idF = fc.string({ minLength: 1, maxLength: 12 }).map((v) => ({ value: v, raw: encodeField(v) }));
  const pairArb: fc.Arbitrary<KeyLocator> = fc
    .tuple(idF, idF, fc.constantFrom('HMAC-SHA-1' as const, 'HMAC-SHA-256' as const), fc.integer({ min: 1, max: 8 }))
    .map(([server, key, macName, blocks]) =>
      makePair(makeFqidLocator(server.value, key.value), macName, Buffer.alloc(16 + 16 * blocks + (macName === 'HMAC-SHA-1' ? 20 : 32), blocks)),
    );
  const tree = fc.letrec<{ node: KeyLocator }>((tie) => ({
    node: fc.oneof(
      { depthSize: 'small', withCrossShrink: true },
      leaf,
      pairArb,
      fc.array(tie('node'), { minLength: 1, maxLength: 4 }).map((items) => makeList(items)),
    ),
  })).node;

  it('serialize → parse → serialize is the identity, and the values survive', () => {
    fc.assert(
      fc.property(tree, (root) => {
        const text = KeySafe.from(root).toString();
        let parsed: KeySafe;
        try {
          parsed = KeySafe.parse(text);
        } catch (e) {
          // only the depth limit may refuse a generated tree
          expect((e as KeySafeError).reason).toBe('too-deep');
          return;
        }
        expect(parsed.toString()).toBe(text);
        expect(JSON.stringify(strip(parsed.root))).toBe(JSON.stringify(strip(root)));
      }),
      fuzzParams(103, 300),
    );
  });

  it('arbitrary text never crashes the parser: it parses and round-trips, or throws ERR_KEYSAFE', () => {
    const alphabet = fc.constantFrom(...'vmware:key/nulrawkeyphrasefqidlistpair(),%2d3c<>VMWARE-NULLaAzZ09'.split(''));
    const text = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc.array(alphabet, { maxLength: 80 }).map((a) => 'vmware:key/' + a.join('')),
    );
    fc.assert(
      fc.property(text, (s) => {
        try {
          expect(KeySafe.parse(s).toString()).toBe(s);
        } catch (e) {
          expect(e).toBeInstanceOf(KeySafeError);
        }
      }),
      fuzzParams(104, 2000),
    );
  });

  it('mutations of a real KeySafe never crash the parser', () => {
    const base = `vmware:key/list/(pair/(fqid/<VMWARE-NULL>/local/k%2d1,HMAC%2dSHA%2d256,${LOCKED}),pair/(phrase/a/${PHRASE_DICT},HMAC%2dSHA%2d1,${esc(Buffer.alloc(68, 3).toString('base64'))}))`;
    expect(KeySafe.parse(base).toString()).toBe(base);
    fc.assert(
      fc.property(fc.nat(base.length - 1), fc.nat(base.length), fc.string({ maxLength: 4 }), (at, len, ins) => {
        const s = base.slice(0, at) + ins + base.slice(Math.min(base.length, at + (len % 6)));
        try {
          expect(KeySafe.parse(s).toString()).toBe(s);
        } catch (e) {
          expect(e).toBeInstanceOf(KeySafeError);
        }
      }),
      fuzzParams(105, 2000),
    );
  });
});

/** Compare trees by decoded values only. */
function strip(n: KeyLocator): unknown {
  switch (n.type) {
    case 'null':
    case 'rawkey':
      return [n.type, n.value.value];
    case 'phrase':
      return [n.type, n.id.value, n.keyGenData.value];
    case 'fqid':
      return [n.type, n.id.value, n.keyServerId.value, n.keyId.value];
    case 'ldap':
    case 'script':
    case 'role':
      return [n.type, n.fields.map((x) => x.value)];
    case 'list':
      return [n.type, n.items.map(strip)];
    case 'pair':
      return [n.type, strip(n.locker), n.macName, n.locked.toString('hex')];
  }
}
