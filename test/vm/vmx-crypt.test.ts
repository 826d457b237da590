// Encrypted .vmx files in VMware's construction: the public Workstation vectors unlock, the bytes
// vmseal writes equal those computed here from the public description with node:crypto alone, every
// plain .vmx comes back byte for byte, and every failure to open is one ERR_WRONG_KEY.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { fuzzParams } from '../helpers/fuzz.js';
import { createCipheriv, createDecipheriv, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { KeySafe, LocalKeyProvider, sealDek } from '../../src/keys/index.js';
import { deriveKek } from '../../src/keys/kdf.js';
import { decryptVmx, encryptVmx, encryptVmxWith, isEncryptedVmx, vmxLockers } from '../../src/vm/vmx-crypt.js';
import { VmxFile } from '../../src/vm/vmx-file.js';
import { keySafeFromJohn, vectors } from '../keys/helpers.js';
import { tempDir } from '../disk/helpers.js';

/** KeySafe field escaping from its public description: every byte that is not [A-Za-z0-9] as %xx. */
function esc(text: string): string {
  return [...Buffer.from(text, 'utf8')]
    .map((b) => (/[A-Za-z0-9]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : '%' + b.toString(16).padStart(2, '0')))
    .join('');
}

/** IV ‖ AES-256-CBC(key, IV, PKCS#7(plain)) ‖ HMAC-SHA-1(key, plain). */
function macThenEncrypt(key: Buffer, iv: Buffer, plain: Buffer): Buffer {
  const c = createCipheriv('aes-256-cbc', key, iv);
  return Buffer.concat([iv, c.update(plain), c.final(), createHmac('sha1', key).update(plain).digest()]);
}

const b64dict = (b: Buffer): string => b.toString('base64').replace(/=/g, '%3d');

const CONFIG = 'config.version = "8"\nvirtualHW.version = "18"\nmemsize = "2048"\nnvme0:0.fileName = "disk.vmdk"\n';

async function errorOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  return p.then(
    () => {
      throw new Error('expected a failure');
    },
    (e: { code: string; message: string }) => e,
  );
}

const FAST = { kind: 'passphrase' as const, kdf: 'workstation' as const };

describe('public Workstation vectors', () => {
  for (const v of vectors.john) {
    it(`a .vmx locked by the John the Ripper vector ${JSON.stringify(v.password)} decrypts, and a wrong password is ERR_WRONG_KEY`, async () => {
      // The vector is the KeySafe; encryption.data is made here under the config key its dict holds.
      const key = Buffer.from(/key=(.*)$/.exec(v.dict)![1]!.replace(/%3d/g, '='), 'base64');
      const data = macThenEncrypt(key, randomBytes(16), Buffer.from(CONFIG)).toString('base64');
      const file = `.encoding = "UTF-8"\ndisplayName = "JtR"\nencryption.keySafe = "${keySafeFromJohn(v.hash)}"\nencryption.data = "${data}"\n`;
      const r = await decryptVmx(Buffer.from(file), { passphrase: v.password });
      expect(r.plain.toString()).toBe(`.encoding = "UTF-8"\ndisplayName = "JtR"\n${CONFIG}`);
      expect(r.unlockedBy).toMatchObject({ kind: 'passphrase', kdf: 'PBKDF2-HMAC-SHA-1' });
      const wrong = await errorOf(decryptVmx(Buffer.from(file), { passphrase: v.password + '!' }));
      expect(wrong.code).toBe('ERR_WRONG_KEY');
    });
  }

  it('the hashcat 27400 vector: its phrase locker, read from a .vmx KeySafe, derives the KEK that opens the first block', async () => {
    const v = vectors.hashcat[0]!;
    const [, , , rounds, saltHex, dataHex] = v.hash.split('$');
    const dict = `pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=${rounds}:salt=${b64dict(Buffer.from(saltHex!, 'hex'))}`;
    // hashcat keeps only IV and the first block: pad the locked data to a parseable length (it is not opened whole).
    const locked = Buffer.concat([Buffer.from(dataHex!, 'hex'), Buffer.alloc(64 + 20)]);
    const ks = KeySafe.parse(`vmware:key/list/(pair/(phrase/${esc('AAECAwQFBgc=')}/${esc(dict)},HMAC%2dSHA%2d1,${esc(locked.toString('base64'))}))`);
    const locker = ks.pairs[0]!.locker;
    if (locker.type !== 'phrase') throw new Error('expected a phrase locker');
    for (const [password, expected] of [
      [v.password, true],
      ['hashcaT', false],
    ] as const) {
      const kek = await deriveKek(Buffer.from(password), locker.kdf!);
      const d = createDecipheriv('aes-256-cbc', kek, locked.subarray(0, 16));
      d.setAutoPadding(false);
      expect(d.update(locked.subarray(16, 32)).toString('latin1') === v.firstBlock).toBe(expected);
    }
  });
});

describe('encrypting a .vmx', () => {
  it('writes exactly the bytes of the public construction (IV, salt, phrase id and config key injected)', async () => {
    const salt = Buffer.alloc(16, 0x5a);
    const id = Buffer.from('0102030405060708', 'hex');
    const lockerIv = Buffer.alloc(16, 0x11);
    const configKey = Buffer.from(Array.from({ length: 32 }, (_, i) => i * 7));
    const dataIv = Buffer.alloc(16, 0x22);
    const queue = [salt, id, lockerIv];
    const plain = `.encoding = "UTF-8"\nconfig.version = "8"\nmemsize = "2048"\ndisplayName = "Injected VM"\n# a comment\nnvme0:0.fileName = "disk.vmdk"\n`;
    const out = await encryptVmxWith(
      Buffer.from(plain),
      { lockers: [{ ...FAST, passphrase: 'openwall' }] },
      {
        configKey: () => Buffer.from(configKey),
        dataIv: () => dataIv,
        keySafe: (n) => {
          const b = queue.shift()!;
          expect(b.length).toBe(n);
          return b;
        },
      },
    );
    // The expected file, from keysafe.md's description:
    const kek = pbkdf2Sync('openwall', salt, 10000, 32, 'sha1');
    const dict = Buffer.from(`type=key:cipher=AES-256:key=${b64dict(configKey)}`);
    const locked = macThenEncrypt(kek, lockerIv, dict);
    const p2k = `pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=10000:salt=${b64dict(salt)}`;
    const keySafe = `vmware:key/list/(pair/(phrase/${esc(id.toString('base64'))}/${esc(p2k)},HMAC%2dSHA%2d1,${esc(locked.toString('base64'))}))`;
    // The encrypted text: vmseal's one line (where the clear lines 0 and 3 stood), then every other line.
    const text = `vmseal.clearLines = "0,3"\nconfig.version = "8"\nmemsize = "2048"\n# a comment\nnvme0:0.fileName = "disk.vmdk"\n`;
    const data = macThenEncrypt(configKey, dataIv, Buffer.from(text)).toString('base64');
    const expected = `.encoding = "UTF-8"\ndisplayName = "Injected VM"\nencryption.keySafe = "${keySafe}"\nencryption.data = "${data}"\n`;
    expect(out.toString()).toBe(expected);
    expect((await decryptVmx(out, { passphrase: 'openwall' })).plain.toString()).toBe(plain);
  });

  it('keeps in the clear exactly .encoding, displayName, encryptedVM.guid, encryption.keySafe, encryption.data', async () => {
    const plain = `.encoding = "UTF-8"\nencryptedVM.guid = "{1234}"\ndisplayName = "secretive"\nguestOS = "ubuntu-64"\ndataFileKey = "type=key:cipher=AES-256:key=abc"\n`;
    const out = await encryptVmx(Buffer.from(plain), { lockers: [{ ...FAST, passphrase: 'pw', rounds: 1000 }] });
    const vmx = VmxFile.parse(out);
    expect(vmx.lines.map((l) => l.key)).toEqual(['.encoding', 'encryptedVM.guid', 'displayName', 'encryption.keySafe', 'encryption.data']);
    expect(out.toString()).not.toContain('ubuntu');
    expect(out.toString()).not.toContain('dataFileKey');
    expect(isEncryptedVmx(vmx)).toBe(true);
    expect(vmxLockers(vmx)).toEqual([expect.objectContaining({ kind: 'passphrase', kdf: { name: 'PBKDF2-HMAC-SHA-1', rounds: 1000 } })]);
  });

  const ROUND_TRIP: Record<string, string> = {
    'displayName in the middle': '.encoding = "UTF-8"\nconfig.version = "8"\ndisplayName = "mid"\nmemsize = "1024"\n',
    'CRLF with comments': '# header\r\n.encoding = "UTF-8"\r\n\r\nmemsize = "1024"   # comment\r\ndisplayName = "crlf"\r\n',
    'a clear line last without a newline': 'memsize = "1024"\ndisplayName = "noeol"',
    'an inner line last without a newline': 'displayName = "x"\nmemsize = "1024"',
    'no clear lines': 'memsize = "1024"\n',
    'duplicates and odd case': 'DISPLAYNAME = "a"\nmemsize = "1"\ndisplayname = "b"\n  .Encoding="UTF-8"\n',
    'its own vmseal.clearLines line': 'displayName = "x"\nvmseal.clearLines = "7"\n',
    empty: '',
  };
  for (const [name, plain] of Object.entries(ROUND_TRIP)) {
    it(`round-trips a .vmx with ${name} byte for byte`, async () => {
      const out = await encryptVmx(Buffer.from(plain), { lockers: [{ ...FAST, passphrase: 'pw', rounds: 1000 }] });
      expect((await decryptVmx(out, { passphrase: 'pw' })).plain.toString()).toBe(plain);
    });
  }

  describe('with a key provider locker (the local keystore)', () => {
    let tmp: ReturnType<typeof tempDir>;
    let provider: LocalKeyProvider;
    beforeAll(async () => {
      tmp = tempDir('vmseal-vmx-');
      provider = new LocalKeyProvider({ home: tmp.dir });
      await provider.init();
    });
    afterAll(() => tmp.cleanup());

    it('opens with the provider, or with the phrase locker beside it; nothing given is ERR_NO_KEY', async () => {
      const plain = Buffer.from('.encoding = "UTF-8"\ndisplayName = "kms"\nmemsize = "512"\n');
      const out = await encryptVmx(plain, {
        lockers: [
          { kind: 'provider', provider },
          { ...FAST, passphrase: 'recovery', rounds: 1000 },
        ],
      });
      const lockers = vmxLockers(VmxFile.parse(out));
      expect(lockers.map((l) => l.kind)).toEqual(['provider', 'passphrase']);
      const viaProvider = await decryptVmx(out, { providers: [provider] });
      expect(viaProvider.plain.equals(plain)).toBe(true);
      expect(viaProvider.unlockedBy).toMatchObject({ kind: 'provider', providerId: provider.id, keyId: lockers[0]!.keyId });
      expect((await decryptVmx(out, { passphrase: 'recovery' })).plain.equals(plain)).toBe(true);
      expect((await errorOf(decryptVmx(out, {}))).code).toBe('ERR_NO_KEY');
    });
  });
});

describe('config key ciphers', () => {
  async function vmxWithKey(cipher: string, key: Buffer, hmacKey: Buffer): Promise<Buffer> {
    const keySafe = await sealDek(key, { cipher, lockers: [{ ...FAST, passphrase: 'pw', rounds: 1000 }] });
    const text = Buffer.from('memsize = "64"\n');
    const iv = randomBytes(16);
    // (a key shorter than AES-256's is refused before any decryption: any CBC key makes the data)
    const c = createCipheriv('aes-256-cbc', key.length >= 32 ? key.subarray(0, 32) : Buffer.alloc(32), iv);
    const data = Buffer.concat([iv, c.update(text), c.final(), createHmac('sha1', hmacKey).update(text).digest()]);
    return Buffer.from(`displayName = "c"\nencryption.keySafe = "${keySafe}"\nencryption.data = "${data.toString('base64')}"\n`);
  }

  it('reads the XTS-AES-256 variant: a 64-byte config key, CBC with its first 32 bytes, the HMAC with all 64', async () => {
    const key = randomBytes(64);
    const r = await decryptVmx(await vmxWithKey('XTS-AES-256', key, key), { passphrase: 'pw' });
    expect(r.plain.toString()).toBe('displayName = "c"\nmemsize = "64"\n');
    expect((await errorOf(decryptVmx(await vmxWithKey('XTS-AES-256', key, key.subarray(0, 32)), { passphrase: 'pw' }))).code).toBe('ERR_WRONG_KEY');
  });

  it('refuses a config key of another cipher with ERR_VMX_FORMAT', async () => {
    const key = randomBytes(16);
    const err = await errorOf(decryptVmx(await vmxWithKey('AES-128', key, key), { passphrase: 'pw' }));
    expect(err).toMatchObject({
      code: 'ERR_VMX_FORMAT',
      message: 'the config key of the .vmx is an AES-128 key; a .vmx config key is AES-256 (or XTS-AES-256)',
    });
  });
});

describe('refusals', () => {
  let encrypted: Buffer;
  beforeAll(async () => {
    encrypted = await encryptVmx(Buffer.from('displayName = "t"\nmemsize = "1024"\nguestOS = "other"\n'), {
      lockers: [{ ...FAST, passphrase: 'pw', rounds: 1000 }],
    });
  });
  const withData = (f: (data: Buffer) => Buffer): Buffer => {
    const text = encrypted.toString();
    const b64 = /encryption\.data = "([^"]*)"/.exec(text)![1]!;
    return Buffer.from(text.replace(b64, f(Buffer.from(b64, 'base64')).toString('base64')));
  };

  it('a modified encryption.data is ERR_WRONG_KEY, with one message for a bad MAC and a bad padding', async () => {
    const messages = new Set<string>();
    for (const at of [0, 16, 31, -21, -1]) {
      const err = await errorOf(
        decryptVmx(
          withData((d) => {
            const c = Buffer.from(d);
            c[at < 0 ? c.length + at : at]! ^= 0x40;
            return c;
          }),
          { passphrase: 'pw' },
        ),
      );
      expect(err.code).toBe('ERR_WRONG_KEY');
      messages.add(err.message);
    }
    expect([...messages]).toEqual(['encryption.data of the .vmx does not verify under its config key: the file was modified or damaged']);
  });

  it('a wrong password is ERR_WRONG_KEY', async () => {
    expect((await errorOf(decryptVmx(encrypted, { passphrase: 'wrong' }))).code).toBe('ERR_WRONG_KEY');
  });

  it('malformed encryption lines are ERR_VMX_FORMAT; plain and already-encrypted files are refused by name', async () => {
    const text = encrypted.toString();
    const noData = text.replace(/encryption\.data = .*\n/, '');
    const twice = text + /encryption\.data = .*\n/.exec(text)![0];
    const notBase64 = text.replace(/encryption\.data = "[^"]*"/, 'encryption.data = "not base64!"');
    const short = withData((d) => d.subarray(0, 40));
    for (const [bad, message] of [
      [noData, 'the .vmx has encryption.keySafe but no encryption.data line'],
      [twice, 'the .vmx has 2 encryption.data lines (lines 3, 4); expected one'],
      [notBase64, 'the value of encryption.data (line 3 of the .vmx) is not canonical base64 of IV 16 + whole AES blocks + HMAC-SHA-1 20 bytes'],
      [short, 'the value of encryption.data (line 3 of the .vmx) is not canonical base64 of IV 16 + whole AES blocks + HMAC-SHA-1 20 bytes'],
    ] as const) {
      expect(await errorOf(decryptVmx(Buffer.from(bad), { passphrase: 'pw' }))).toMatchObject({ code: 'ERR_VMX_FORMAT', message });
    }
    expect((await errorOf(decryptVmx(Buffer.from('memsize = "1"\n'), { passphrase: 'pw' }))).code).toBe('ERR_VMX_NOT_ENCRYPTED');
    expect((await errorOf(encryptVmx(encrypted, { lockers: [{ ...FAST, passphrase: 'pw' }] }))).code).toBe('ERR_VMX_ENCRYPTED');
    const badKeySafe = text.replace(/vmware:key\/list/, 'vmware:key/lust');
    expect((await errorOf(decryptVmx(Buffer.from(badKeySafe), { passphrase: 'pw' }))).code).toBe('ERR_KEYSAFE');
  });
});

describe('round trip on generated files', () => {
  const key = fc.oneof(
    fc.constantFrom('.encoding', 'displayName', 'DisplayName', 'encryptedVM.guid', 'vmseal.clearLines'),
    fc.stringMatching(/^[a-z][a-z0-9_.:]{0,10}$/),
  );
  const line = fc.oneof(
    fc.tuple(fc.stringMatching(/^[ \t]{0,2}$/), key, fc.stringMatching(/^[^"\r\n]{0,12}$/)).map(([a, k, v]) => `${a}${k} = "${v}"`),
    fc.stringMatching(/^#[^\r\n]{0,12}$/),
    fc.constant(''),
  );
  it('decrypt(encrypt(x)) is x byte for byte, whatever the lines, their endings and the clear lines among them', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(line, fc.constantFrom('\n', '\r\n')), { maxLength: 12 }), fc.boolean(), async (lines, dropLast) => {
        let plain = lines.map(([l, e]) => l + e).join('');
        if (dropLast) plain = plain.replace(/\r?\n$/, '');
        const out = await encryptVmx(Buffer.from(plain), { lockers: [{ ...FAST, passphrase: 'pw', rounds: 1 }] });
        expect((await decryptVmx(out, { passphrase: 'pw' })).plain.toString()).toBe(plain);
      }),
      fuzzParams(0x5a3, 60),
    );
  });
});
