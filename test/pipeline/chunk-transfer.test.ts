// The copy jobs' chunks as native jobs (src/pipeline/chunk-transfer.ts: transferChunk reads,
// encrypts and writes a chunk on one pool thread): byte-identical plain copies and the same
// ciphertext as the engine, chunks across extent boundaries and in ZERO extents through the VMDK
// layer, a truncated input, a full file system, and the whole jobs on tmpfs where copy.ts uses it.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createDisk, openDisk, type VirtualDisk } from '../../src/vmdk/index.js';
import { createDataCipher } from '../../src/disk/for-pipeline.js';
import { convertDisk, decryptDisk, deepRekey, encryptDisk } from '../../src/pipeline/index.js';
import { ChunkTransfer, CHUNK_TRANSFER_ENV } from '../../src/pipeline/chunk-transfer.js';
import { runChunks } from '../../src/pipeline/engine.js';
import { chunked, type Span } from '../../src/pipeline/plan.js';
import { TMPFS_MAGIC } from '../../src/util/inline-io.js';
import { phraseLocker } from '../disk/helpers.js';

const KiB = 1024;
const MiB = 1 << 20;
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-ctransfer-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A twoGbMaxExtentFlat-style disk of three extents made by hand: 2 MiB in a.bin (at file offset
 * 0), 1 MiB of ZERO, 3 MiB in b.bin (at file offset 512 bytes). Returns the descriptor and the image.
 */
function threeExtents(): [string, Buffer] {
  const a = randomBytes(2 * MiB);
  const b = randomBytes(3 * MiB);
  writeFileSync(join(dir, 'a.bin'), a);
  writeFileSync(join(dir, 'b.bin'), Buffer.concat([Buffer.alloc(512, 0xee), b]));
  const desc = join(dir, 'three.vmdk');
  writeFileSync(
    desc,
    [
      '# Disk DescriptorFile',
      'version=1',
      'CID=12345678',
      'parentCID=ffffffff',
      'createType="twoGbMaxExtentFlat"',
      '',
      '# Extent description',
      `RW ${(2 * MiB) / 512} FLAT "a.bin" 0`,
      `RW ${MiB / 512} ZERO`,
      `RW ${(3 * MiB) / 512} FLAT "b.bin" 1`,
      '',
      'ddb.virtualHWVersion = "4"',
      'ddb.adapterType = "lsilogic"',
      '',
    ].join('\n'),
  );
  return [desc, Buffer.concat([a, Buffer.alloc(MiB), b])];
}

async function readAll(disk: VirtualDisk): Promise<Buffer> {
  const buf = Buffer.alloc(disk.capacity);
  await disk.readInto(0, buf);
  return buf;
}

/** Run `transfer` over the whole capacity in chunks of `chunkSize`, as copy.ts does. */
async function runAll(transfer: ChunkTransfer, capacity: number, chunkSize: number): Promise<number> {
  let done = 0;
  async function* all(): AsyncIterable<Span> {
    yield { offset: 0, length: capacity };
  }
  await runChunks({
    chunks: chunked(all(), chunkSize),
    chunkSize,
    depth: 4,
    what: 'test transfer',
    read: (chunk, buf) => transfer.run(chunk, buf),
    transform: async () => [],
    write: () => Promise.reject(new Error('nothing is written after a transfer')),
    done: (chunk) => {
      done += chunk.length;
    },
  });
  return done;
}

describe('ChunkTransfer', () => {
  it('copies a three-extent flat disk byte for byte; chunks across extents or in the ZERO extent go through the VMDK layer', async () => {
    const [input, image] = threeExtents();
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 'out.vmdk'), { capacity: source.capacity, subformat: 'monolithicFlat' });
    const transfer = (await ChunkTransfer.open({ source, target, cipher: null }))!;
    expect(transfer).not.toBeNull();
    try {
      // 768 KiB chunks: some lie in one extent, some cross a boundary, one is in the ZERO extent.
      expect(await runAll(transfer, source.capacity, 768 * KiB)).toBe(6 * MiB);
      expect(transfer.nativeBytes).toBeGreaterThan(2 * MiB);
      expect(transfer.nativeBytes).toBeLessThan(6 * MiB);
    } finally {
      await transfer.close();
    }
    expect((await readAll(target)).equals(image)).toBe(true);
    await target.close();
    await source.close();
  });

  it('encrypts into the same ciphertext as the data cipher on the whole image', async () => {
    const [input, image] = threeExtents();
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 'enc.vmdk'), { capacity: source.capacity, subformat: 'monolithicFlat' });
    const key = randomBytes(64);
    const cipher = createDataCipher('aes-256-xts', key, 4096);
    const transfer = (await ChunkTransfer.open({ source, target, cipher }))!;
    try {
      await runAll(transfer, source.capacity, MiB);
    } finally {
      await transfer.close();
    }
    const want = Buffer.from(image);
    await cipher.encrypt(want, 0);
    expect((await readAll(target)).equals(want)).toBe(true);
    cipher.dispose();
    await target.close();
    await source.close();
  });

  it('decrypts into the plaintext the data cipher gives; chunks across extents come from the plain source', async () => {
    // The three extents' bytes taken as ciphertext; the plaintext is their decryption, zeros in the ZERO extent.
    const [input, stored] = threeExtents();
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 'dec.vmdk'), { capacity: source.capacity, subformat: 'monolithicFlat' });
    const cipher = createDataCipher('aes-256-xts', randomBytes(64), 512);
    const plain = Buffer.from(stored);
    await cipher.decrypt(plain.subarray(0, 2 * MiB), 0);
    await cipher.decrypt(plain.subarray(3 * MiB), (3 * MiB) / 512);
    let layered = 0;
    const plainSource = {
      readInto: (position: number, buf: Uint8Array): Promise<void> => {
        layered += buf.byteLength;
        buf.set(plain.subarray(position, position + buf.byteLength));
        return Promise.resolve();
      },
    };
    const transfer = (await ChunkTransfer.open({ source, plainSource, target, cipher, direction: 'decrypt' }))!;
    try {
      expect(await runAll(transfer, source.capacity, 768 * KiB)).toBe(6 * MiB);
      expect(transfer.nativeBytes + layered).toBe(6 * MiB);
      expect(layered).toBeGreaterThan(0);
    } finally {
      await transfer.close();
    }
    expect((await readAll(target)).equals(plain)).toBe(true);
    cipher.dispose();
    await target.close();
    await source.close();
  });

  it('re-encrypts into what the new cipher gives on the plaintext, chunks across extents included', async () => {
    const [input, stored] = threeExtents();
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 'rekeyed.vmdk'), { capacity: source.capacity, subformat: 'monolithicFlat' });
    const oldCipher = createDataCipher('aes-256-xts', randomBytes(64), 512);
    const newCipher = createDataCipher('aes-256-xts', randomBytes(64), 4096);
    const plain = Buffer.from(stored);
    await oldCipher.decrypt(plain.subarray(0, 2 * MiB), 0);
    await oldCipher.decrypt(plain.subarray(3 * MiB), (3 * MiB) / 512);
    const plainSource = {
      readInto: (position: number, buf: Uint8Array): Promise<void> => {
        buf.set(plain.subarray(position, position + buf.byteLength));
        return Promise.resolve();
      },
    };
    const job = { source, plainSource, target, cipher: oldCipher, direction: 'reencrypt' as const, cipher2: newCipher };
    const transfer = (await ChunkTransfer.open(job))!;
    try {
      expect(await runAll(transfer, source.capacity, 768 * KiB)).toBe(6 * MiB);
      expect(transfer.nativeBytes).toBeGreaterThan(0);
      expect(transfer.nativeBytes).toBeLessThan(6 * MiB);
    } finally {
      await transfer.close();
    }
    const want = Buffer.from(plain);
    await newCipher.encrypt(want, 0);
    expect((await readAll(target)).equals(want)).toBe(true);
    oldCipher.dispose();
    newCipher.dispose();
    await target.close();
    await source.close();
  });

  it('reports an input cut short after it was opened as ERR_VMDK_TRUNCATED', async () => {
    const [input] = threeExtents();
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 'out.vmdk'), { capacity: source.capacity, subformat: 'monolithicFlat' });
    const transfer = (await ChunkTransfer.open({ source, target, cipher: null }))!;
    truncateSync(join(dir, 'b.bin'), MiB);
    try {
      await expect(runAll(transfer, source.capacity, MiB)).rejects.toMatchObject({
        code: 'ERR_VMDK_TRUNCATED',
        message: expect.stringContaining('b.bin'),
      });
    } finally {
      await transfer.close();
      await target.close();
      await source.close();
    }
  });

  it('is not used for sparse outputs', async () => {
    const [input] = threeExtents();
    const source = await openDisk(input, { readOnly: true });
    const target = await createDisk(join(dir, 'sparse.vmdk'), { capacity: source.capacity, subformat: 'monolithicSparse' });
    expect(await ChunkTransfer.open({ source, target, cipher: null })).toBeNull();
    await target.close();
    await source.close();
  });
});

// A full file system: a 2 MiB tmpfs mounted by the test (CI runs as root).
const canMount = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = join(tmpdir(), `vmseal-mount-probe-${process.pid}`);
  mkdirSync(probe, { recursive: true });
  const r = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', probe]);
  if (r.status === 0) spawnSync('umount', [probe]);
  rmSync(probe, { recursive: true, force: true });
  return r.status === 0;
})();

describe.skipIf(!canMount)('ChunkTransfer on a full file system', () => {
  it('reports ENOSPC as ERR_VMDK_IO naming the output file', async () => {
    const [input] = threeExtents();
    const mnt = join(dir, 'small');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mnt]);
    try {
      const source = await openDisk(input, { readOnly: true });
      const target = await createDisk(join(mnt, 'out.vmdk'), { capacity: source.capacity, subformat: 'monolithicFlat' });
      const transfer = (await ChunkTransfer.open({ source, target, cipher: null }))!;
      try {
        await expect(runAll(transfer, source.capacity, MiB)).rejects.toMatchObject({
          code: 'ERR_VMDK_IO',
          message: expect.stringMatching(/^cannot write \d+ bytes at offset \d+: ENOSPC \(.*out-flat\.vmdk\)$/),
        });
      } finally {
        await transfer.close();
        await target.close();
        await source.close();
      }
    } finally {
      execFileSync('umount', [mnt]);
    }
  });
});

// The jobs: copy.ts takes this path for flat outputs on tmpfs unless VMSEAL_CHUNK_TRANSFER=0.
const shm = existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS_MAGIC;

describe.skipIf(!shm)('copy jobs on tmpfs', () => {
  let folder: string;
  beforeEach(() => {
    folder = mkdtempSync(join('/dev/shm', 'vmseal-ctransfer-'));
  });
  afterEach(() => {
    delete process.env[CHUNK_TRANSFER_ENV];
    rmSync(folder, { recursive: true, force: true });
  });

  it('encrypt raw → monolithicFlat, decrypt back and convert flat → flat give the input, with or without the native transfer', async () => {
    const image = randomBytes(9 * MiB + 4096);
    const raw = join(folder, 'in.raw');
    writeFileSync(raw, image);
    const outputs: Buffer[] = [];
    for (const setting of [undefined, '0']) {
      if (setting === undefined) delete process.env[CHUNK_TRANSFER_ENV];
      else process.env[CHUNK_TRANSFER_ENV] = setting;
      const tag = setting === '0' ? 'off' : 'on';
      const enc = join(folder, `enc-${tag}.vmdk`);
      const r = await encryptDisk(raw, enc, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')], chunkSize: 2 * MiB });
      expect(r.bytesProcessed).toBe(image.length);
      const dec = join(folder, `dec-${tag}.raw`);
      await decryptDisk(enc, dec, { keys: { passphrase: 'pw' }, subformat: 'raw' });
      expect(readFileSync(dec).equals(image)).toBe(true);
      const flat = join(folder, `flat-${tag}.vmdk`);
      await convertDisk(dec, flat, { subformat: 'monolithicFlat' });
      const again = join(folder, `again-${tag}.vmdk`);
      await convertDisk(flat, again);
      outputs.push(readFileSync(join(folder, `again-${tag}-flat.vmdk`)));
    }
    expect(outputs[0]!.equals(image)).toBe(true);
    expect(outputs[1]!.equals(image)).toBe(true);
  });

  it('decrypts an encrypted flat disk with the native transfer', async () => {
    const image = randomBytes(5 * MiB);
    const raw = join(folder, 'in.raw');
    writeFileSync(raw, image);
    const enc = join(folder, 'enc.vmdk');
    await encryptDisk(raw, enc, { subformat: 'monolithicFlat', lockers: [phraseLocker('pw')] });
    const dec = join(folder, 'dec.raw');
    const moved = await nativeBytesOf(() => decryptDisk(enc, dec, { keys: { passphrase: 'pw' }, subformat: 'raw', chunkSize: 2 * MiB }));
    expect(readFileSync(dec).equals(image)).toBe(true);
    expect(moved).toEqual([image.length]);
  });

  it('re-encrypts a flat disk (deep rekey in copy mode, new unit size) with the native transfer', async () => {
    const image = randomBytes(5 * MiB);
    const raw = join(folder, 'in.raw');
    writeFileSync(raw, image);
    const enc = join(folder, 'enc.vmdk');
    await encryptDisk(raw, enc, { subformat: 'monolithicFlat', lockers: [phraseLocker('old')] });
    const moved = await nativeBytesOf(() =>
      deepRekey(enc, { keys: { passphrase: 'old' }, lockers: [phraseLocker('new')], unitSize: 4096, chunkSize: 2 * MiB }),
    );
    expect(moved).toEqual([image.length]);
    const dec = join(folder, 'dec.raw');
    await decryptDisk(enc, dec, { keys: { passphrase: 'new' }, subformat: 'raw' });
    expect(readFileSync(dec).equals(image)).toBe(true);
    await expect(decryptDisk(enc, join(folder, 'old.raw'), { keys: { passphrase: 'old' }, subformat: 'raw' })).rejects.toMatchObject({
      code: expect.any(String),
    });
  });
});

/** Runs `job` and returns the bytes each native transfer it opened moved (the real transfer runs: nothing is replaced). */
async function nativeBytesOf(job: () => Promise<unknown>): Promise<number[]> {
  const opened: ChunkTransfer[] = [];
  const real = ChunkTransfer.open.bind(ChunkTransfer);
  const spy = vi.spyOn(ChunkTransfer, 'open').mockImplementation(async (spec) => {
    const t = await real(spec);
    if (t) opened.push(t);
    return t;
  });
  try {
    await job();
  } finally {
    spy.mockRestore();
  }
  return opened.map((t) => t.nativeBytes);
}
