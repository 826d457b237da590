// The state-file container (docs/vm.md, "State files"): round trips at the chunk edges, and every way
// a stored file can be changed — each header field, a chunk's bytes, truncation, extra bytes,
// chunks reordered, a chunk from another file — is refused with a typed error before any plaintext
// reaches the output's name.
import { createDecipheriv, createHash, hkdfSync, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalKeyProvider, unlockKeySafe, type LockerSpec } from '../../src/keys/index.js';
import { decryptStateFile, encryptStateFile, readStateFileHeader, rewrapStateFile, STATE_CHUNK_SIZE, STATE_TAG_BYTES, VmError } from '../../src/vm/index.js';
import { MemoryKeyProvider, phraseLocker, tempDir } from '../disk/helpers.js';

const MiB = STATE_CHUNK_SIZE;
const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
};
let tmp: ReturnType<typeof tempDir>;
let provider: LocalKeyProvider;
let kekId: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-state-');
  provider = new LocalKeyProvider({ home: join(tmp.dir, 'home') });
  kekId = (await provider.createKey({ name: 'vm' })).keyId;
});
afterAll(async () => {
  await provider.close();
  tmp.cleanup();
});

const vmLocker = (): LockerSpec => ({ kind: 'provider', provider, keyId: kekId });
const keys = () => ({ providers: [provider] });
let seq = 0;
const path = (name: string) => join(tmp.dir, `${seq++}-${name}`);

/** A plain file of `size` bytes with a marker at the start of every chunk, encrypted. */
async function sealed(size: number, lockers: LockerSpec[] = [vmLocker()]): Promise<{ plain: Buffer; enc: string }> {
  const plain = randomBytes(size);
  for (let off = 0; off + 16 <= size; off += MiB) plain.write('MARKER-MARKER-MK', off, 'latin1');
  const src = path('plain.nvram');
  writeFileSync(src, plain);
  const enc = path('enc.nvram');
  await encryptStateFile(src, enc, { lockers });
  return { plain, enc };
}

/** Decrypting `file` fails with `code` (and `chunk`, if given), and leaves no output and no temp file. */
async function refused(file: string, code: string, chunk?: number): Promise<VmError | Error> {
  const out = path('out.nvram');
  const err = await decryptStateFile(file, out, { keys: keys() }).then(
    () => undefined,
    (e: unknown) => e as Error,
  );
  expect(err, 'decryption should fail').toBeDefined();
  expect((err as { code?: string }).code).toBe(code);
  if (chunk !== undefined) {
    expect((err as VmError).chunk).toBe(chunk);
    expect(err!.message).toContain(`chunk ${chunk} of`);
    expect(err!.message).toContain(file);
  }
  expect(existsSync(out)).toBe(false);
  expect(readdirSync(tmp.dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  return err!;
}

function edit(file: string, fn: (b: Buffer) => Buffer): string {
  const copy = path('edited.nvram');
  writeFileSync(copy, fn(Buffer.from(readFileSync(file))));
  return copy;
}

describe('state file round trip', () => {
  it.each([
    ['empty', 0],
    ['1 byte', 1],
    ['exactly 1 MiB', MiB],
    ['3 MiB + 1', 3 * MiB + 1],
  ])('%s', async (_name, size) => {
    const { plain, enc } = await sealed(size);
    const h = await readStateFileHeader(enc);
    expect(h.length).toBe(size);
    expect(h.chunkSize).toBe(MiB);
    const chunks = Math.max(1, Math.ceil(size / MiB));
    expect(statSync(enc).size).toBe(h.headerBytes + size + chunks * STATE_TAG_BYTES);
    expect(statSync(enc).mode & 0o777).toBe(0o600);
    expect(readFileSync(enc).includes('MARKER-MARKER-MK')).toBe(false);
    const out = path('out.nvram');
    await decryptStateFile(enc, out, { keys: keys() });
    expect(readFileSync(out).equals(plain)).toBe(true);
  });

  it('encrypts and decrypts a file in place (output = input)', async () => {
    const plain = randomBytes(MiB + 5);
    const f = path('inplace.vmem');
    writeFileSync(f, plain);
    await encryptStateFile(f, f, { lockers: [vmLocker()] });
    expect(readFileSync(f).subarray(0, 8).toString()).toBe('VMSEALST');
    await decryptStateFile(f, f, { keys: keys() });
    expect(readFileSync(f).equals(plain)).toBe(true);
  });

  it('gives every file its own key and file id', async () => {
    const a = await readStateFileHeader((await sealed(10)).enc);
    const b = await readStateFileHeader((await sealed(10)).enc);
    expect(a.fileId.equals(b.fileId)).toBe(false);
    expect(a.keySafe).not.toBe(b.keySafe);
  });

  it('a wrong passphrase is ERR_WRONG_KEY', async () => {
    const { enc } = await sealed(100, [phraseLocker('right passphrase')]);
    const out = path('out');
    await expect(decryptStateFile(enc, out, { keys: { passphrase: 'wrong passphrase' } })).rejects.toMatchObject({ code: 'ERR_WRONG_KEY' });
    await decryptStateFile(enc, out, { keys: { passphrase: 'right passphrase' } });
  });

  it('a shallow rekey rewrites only the KeySafe: the chunks stay byte for byte', async () => {
    const { plain, enc } = await sealed(2 * MiB + 3);
    const before = readFileSync(enc);
    const h0 = await readStateFileHeader(enc);
    await rewrapStateFile(enc, { keys: keys(), add: [phraseLocker('recovery passphrase')], remove: (l) => l.kind === 'provider' });
    const after = readFileSync(enc);
    const h1 = await readStateFileHeader(enc);
    expect(h1.keySafe).not.toBe(h0.keySafe);
    expect(after.subarray(h1.headerBytes).equals(before.subarray(h0.headerBytes))).toBe(true);
    const out = path('out');
    await decryptStateFile(enc, out, { keys: { passphrase: 'recovery passphrase' } });
    expect(readFileSync(out).equals(plain)).toBe(true);
    await expect(decryptStateFile(enc, path('out'), { keys: keys() })).rejects.toMatchObject({ code: 'ERR_NO_KEY' });
  });
});

describe('a changed state file is refused', () => {
  let plain: Buffer;
  let enc: string;
  let headerBytes: number;
  /** Offset of chunk i in the container. */
  const at = (i: number) => headerBytes + i * (MiB + STATE_TAG_BYTES);

  beforeAll(async () => {
    ({ plain, enc } = await sealed(3 * MiB + 1));
    headerBytes = (await readStateFileHeader(enc)).headerBytes;
    expect(plain.length).toBe(3 * MiB + 1);
  });

  const flip = (off: number) => (b: Buffer) => {
    b[off]! ^= 0x01;
    return b;
  };

  it.each([
    ['magic', 0],
    ['version', 9],
    ['flags', 11],
    ['chunk size', 13],
    ['reserved bytes', 43],
  ])('the %s field: ERR_VM_STATE_FORMAT', async (_field, off) => {
    const err = await refused(edit(enc, flip(off)), 'ERR_VM_STATE_FORMAT');
    expect(err.message).toMatch(/vmseal state file/);
  });

  it('the KeySafe length field: the header or the KeySafe is refused', async () => {
    for (const off of [46, 47]) {
      const file = edit(enc, flip(off));
      const err = await decryptStateFile(file, path('out'), { keys: keys() }).catch((e: unknown) => e as { code: string });
      expect(['ERR_VM_STATE_FORMAT', 'ERR_KEYSAFE']).toContain((err as { code: string }).code);
    }
  });

  it('a KeySafe length past 64 KiB is refused before anything is allocated', async () => {
    await refused(
      edit(enc, (b) => {
        b.writeUInt32BE(0xffffffff, 44);
        return b;
      }),
      'ERR_VM_STATE_FORMAT',
    );
  });

  it.each([
    ['original length + 1', 23],
    ['original length, high byte', 18],
    ['file id', 30],
  ])('the %s: ERR_VM_STATE_AUTH at chunk 0', async (_field, off) => {
    await refused(edit(enc, flip(off)), 'ERR_VM_STATE_AUTH', 0);
  });

  it('the KeySafe text: the key layer refuses it (ERR_KEYSAFE or ERR_WRONG_KEY)', async () => {
    // A character in the middle of the locked data: base64 stays valid, the locker's MAC fails.
    const mid = 48 + Math.floor((headerBytes - 48) * 0.8);
    const file = edit(enc, (b) => {
      b[mid] = b[mid] === 0x41 ? 0x42 : 0x41;
      return b;
    });
    const err = await decryptStateFile(file, path('out'), { keys: keys() }).catch((e: unknown) => e as { code: string });
    expect(['ERR_WRONG_KEY', 'ERR_KEYSAFE']).toContain((err as { code: string }).code);
  });

  it('the KeySafe of another file: chunk 0 does not authenticate', async () => {
    const other = readFileSync((await sealed(5)).enc);
    const otherHeader = other.readUInt32BE(44) + 48;
    const mixed = Buffer.concat([readFileSync(enc).subarray(0, 44), other.subarray(44, otherHeader), readFileSync(enc).subarray(headerBytes)]);
    const file = path('mixed');
    writeFileSync(file, mixed);
    await refused(file, 'ERR_VM_STATE_AUTH', 0);
  });

  it.each([0, 1, 2, 3])('a bit of chunk %i: ERR_VM_STATE_AUTH naming that chunk', async (i) => {
    await refused(edit(enc, flip(at(i) + 7)), 'ERR_VM_STATE_AUTH', i);
  });

  it('a bit of a tag: ERR_VM_STATE_AUTH', async () => {
    await refused(edit(enc, flip(at(2) - 1)), 'ERR_VM_STATE_AUTH', 1);
  });

  it('truncated by one byte: the last chunk is truncated', async () => {
    const err = await refused(
      edit(enc, (b) => b.subarray(0, b.length - 1)),
      'ERR_VM_STATE_AUTH',
      3,
    );
    expect(err.message).toContain('truncated');
  });

  it('truncated at a chunk boundary (the last chunk dropped)', async () => {
    await refused(
      edit(enc, (b) => b.subarray(0, at(3))),
      'ERR_VM_STATE_AUTH',
      3,
    );
  });

  it('truncated, with the length in the header lowered to match: chunk 0 does not authenticate', async () => {
    await refused(
      edit(enc, (b) => {
        b.writeBigUInt64BE(BigInt(3 * MiB), 16);
        return b.subarray(0, at(3));
      }),
      'ERR_VM_STATE_AUTH',
      0,
    );
  });

  it('cut to the header alone', async () => {
    await refused(
      edit(enc, (b) => b.subarray(0, headerBytes)),
      'ERR_VM_STATE_AUTH',
      0,
    );
  });

  it('bytes appended after the last chunk', async () => {
    const err = await refused(
      edit(enc, (b) => Buffer.concat([b, Buffer.from('x')])),
      'ERR_VM_STATE_AUTH',
      3,
    );
    expect(err.message).toContain('follow chunk 3 of 4, the last chunk');
  });

  it('two chunks swapped', async () => {
    await refused(
      edit(enc, (b) => {
        const c0 = Buffer.from(b.subarray(at(0), at(1)));
        b.copy(b, at(0), at(1), at(2));
        c0.copy(b, at(1));
        return b;
      }),
      'ERR_VM_STATE_AUTH',
      0,
    );
  });

  it('an independent reader of the format in docs/vm.md opens it, and only with the right flag and index', async () => {
    // node:crypto straight from the spec: version 2, chunk key = HKDF-SHA-256(file key, salt = file
    // id, info "vmseal state chunks"), nonce = file id[0..4] ‖ u64 index, AAD = SHA-256(header bytes
    // 0..44) ‖ u64 index ‖ u8 last. The file key comes from the KeySafe in the header.
    const b = readFileSync(enc);
    expect(b.readUInt16BE(8)).toBe(2);
    const opened = await unlockKeySafe(b.toString('latin1', 48, headerBytes), keys());
    expect(opened.cipher).toBe('AES-256');
    const chunkKey = Buffer.from(hkdfSync('sha256', opened.key, b.subarray(24, 40), 'vmseal state chunks', 32));
    const hash = createHash('sha256').update(b.subarray(0, 44)).digest();
    const open = (i: number, len: number, index: number, last: number): Buffer => {
      const nonce = Buffer.concat([b.subarray(24, 28), u64(index)]);
      const d = createDecipheriv('aes-256-gcm', chunkKey, nonce);
      d.setAAD(Buffer.concat([hash, u64(index), Buffer.from([last])]));
      d.setAuthTag(b.subarray(at(i) + len, at(i) + len + 16));
      return Buffer.concat([d.update(b.subarray(at(i), at(i) + len)), d.final()]);
    };
    const parts = [open(0, MiB, 0, 0), open(1, MiB, 1, 0), open(2, MiB, 2, 0), open(3, 1, 3, 1)];
    expect(Buffer.concat(parts).equals(plain)).toBe(true);
    expect(() => open(3, 1, 3, 0)).toThrow(); // the last chunk sealed as last
    expect(() => open(2, MiB, 2, 1)).toThrow(); // a middle chunk cannot pass for the last one
    expect(() => open(1, MiB, 2, 0)).toThrow(); // nor sit at another index
    opened.key.fill(0);
  });

  it('a chunk taken from another file of the same VM key, at the same place', async () => {
    const { enc: other } = await sealed(3 * MiB + 1);
    const o = readFileSync(other);
    const oh = (await readStateFileHeader(other)).headerBytes;
    const file = edit(enc, (b) => {
      o.copy(b, at(1), oh + (MiB + STATE_TAG_BYTES), oh + 2 * (MiB + STATE_TAG_BYTES));
      return b;
    });
    await refused(file, 'ERR_VM_STATE_AUTH', 1);
  });

  it('a file that is no state file at all', async () => {
    const f = path('plain.bin');
    writeFileSync(f, Buffer.from('just some bytes'));
    const err = await refused(f, 'ERR_VM_STATE_FORMAT');
    expect(err.message).toContain(f);
  });

  it('the original still decrypts', async () => {
    const out = path('out');
    await decryptStateFile(enc, out, { keys: keys() });
    expect(readFileSync(out).equals(plain)).toBe(true);
  });
});

describe('a plain file that changes while it is encrypted, and cancellation', () => {
  /** A key provider that does `during` when the job fetches the KEK: after the job took the file's size. */
  function providerDoing(during: () => void): MemoryKeyProvider {
    const p = new MemoryKeyProvider('vmkms');
    const getKey = p.getKey.bind(p);
    p.getKey = async (keyId: string) => {
      during();
      return getKey(keyId);
    };
    return p;
  }

  it.each([
    ['shrinks', (f: string) => truncateSync(f, MiB)],
    ['grows', (f: string) => appendFileSync(f, Buffer.alloc(10))],
  ])('a file that %s: ERR_VM_STATE_CHANGED, no output', async (_what, change) => {
    const src = path('running.vmem');
    writeFileSync(src, randomBytes(2 * MiB + 7));
    const p = providerDoing(() => change(src));
    const { keyId } = await p.createKey();
    const out = path('out.vmem');
    await expect(encryptStateFile(src, out, { lockers: [{ kind: 'provider', provider: p, keyId }] })).rejects.toMatchObject({
      code: 'ERR_VM_STATE_CHANGED',
      message: expect.stringContaining('stop the VM that writes it'),
    });
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(tmp.dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('an aborted job stops with the abort reason and leaves nothing', async () => {
    const src = path('big.vmem');
    writeFileSync(src, randomBytes(3 * MiB));
    const ac = new AbortController();
    const p = providerDoing(() => ac.abort(Object.assign(new Error('interrupted by SIGINT'), { name: 'AbortError' })));
    const { keyId } = await p.createKey();
    const out = path('out.vmem');
    await expect(encryptStateFile(src, out, { lockers: [{ kind: 'provider', provider: p, keyId }], signal: ac.signal })).rejects.toMatchObject({
      name: 'AbortError',
    });
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(tmp.dir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });
});

describe('arguments', () => {
  it('refuses bad options with ERR_INVALID_ARGUMENT', async () => {
    await expect(encryptStateFile('', 'x', { lockers: [vmLocker()] })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    const src = path('p');
    writeFileSync(src, 'x');
    await expect(encryptStateFile(src, path('o'), { lockers: [vmLocker()], mode: 0o7777 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(encryptStateFile(src, path('o'), { lockers: [] })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
