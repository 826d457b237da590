// Helpers of the pipeline's crash and journal tests: the disks they break over and over (one made
// once, a fresh copy per run) and what a disk decrypts to; and an independent implementation of
// verify's contentHash.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { openDisk } from '../../src/disk/index.js';
import { encryptDisk } from '../../src/pipeline/index.js';
import { phraseLocker, sha256 } from '../disk/helpers.js';

/** SHA-256 of the plaintext of the encrypted disk at `disk`, opened read-only with `passphrase`. */
export async function plainHash(disk: string, passphrase: string): Promise<string> {
  const d = await openDisk(disk, { keys: { passphrase }, readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

/** Whether `disk` opens with `passphrase` and reads as `image`: false when it does not open. */
export function opensAs(disk: string, image: Buffer): (passphrase: string) => Promise<boolean> {
  return (passphrase) =>
    plainHash(disk, passphrase).then(
      (h) => h === sha256(image),
      () => false,
    );
}

/**
 * Make the disk `dir/name` (dir is created) from the raw image `plainRaw`, for an in-place job to
 * run on: a plain disk converted by qemu-img for `encrypt`, one encrypted under the passphrase
 * "old" for `rekey`. Returns a function that copies the disk's files (those whose names start with
 * its stem) into a new sub-folder of `dir` and returns the copy's path.
 */
export async function diskTemplate(
  dir: string,
  plainRaw: string,
  op: 'encrypt' | 'rekey',
  subformat: 'monolithicSparse' | 'monolithicFlat',
  name = 'original.vmdk',
): Promise<(to: string) => string> {
  mkdirSync(dir);
  const original = join(dir, name);
  if (op === 'encrypt') execFileSync('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'vmdk', '-o', `subformat=${subformat}`, plainRaw, original]);
  else await encryptDisk(plainRaw, original, { subformat, lockers: [phraseLocker('old')] });
  const stem = basename(name, '.vmdk');
  return (to) => {
    const sub = join(dir, to);
    mkdirSync(sub);
    for (const f of readdirSync(dir, { withFileTypes: true })) if (f.isFile() && f.name.startsWith(stem)) copyFileSync(join(dir, f.name), join(sub, f.name));
    return join(sub, name);
  };
}

/** A function that copies the raw image `plainRaw` to `dir/<sub>/in.raw` (sub created) and returns that path. */
export function rawInputs(dir: string, plainRaw: string): (sub: string) => string {
  mkdirSync(dir);
  return (sub) => {
    mkdirSync(join(dir, sub));
    copyFileSync(plainRaw, join(dir, sub, 'in.raw'));
    return join(dir, sub, 'in.raw');
  };
}

/** A function that encrypts `plainRaw` (passphrase "old", monolithicSparse) to `dir/<sub>/disk.vmdk` and returns that path. */
export function encryptedDisks(dir: string, plainRaw: string): (sub: string) => Promise<string> {
  mkdirSync(dir);
  return async (sub) => {
    mkdirSync(join(dir, sub));
    const p = join(dir, sub, 'disk.vmdk');
    await encryptDisk(plainRaw, p, { subformat: 'monolithicSparse', lockers: [phraseLocker('old')] });
    return p;
  };
}

/**
 * verify's contentHash written from its definition in docs/pipeline.md, apart from src/: SHA-256 over
 * (offset u64 BE, length u32 BE, SHA-256 of the block) for every 64 KiB block that is not all zeros.
 * `pieces` are the disk's non-hole bytes, in order, each starting on a 64 KiB boundary (everything
 * else is zeros); `capacity` cuts a short last block.
 */
export function contentHashOfPieces(pieces: Array<{ offset: number; data: Buffer }>, capacity = Infinity): string {
  const outer = createHash('sha256');
  for (const { offset, data } of pieces) {
    if (offset % 65536 !== 0) throw new Error(`piece at ${offset} is not on a 64 KiB boundary`);
    for (let p = 0; p < data.length && offset + p < capacity; p += 65536) {
      const block = data.subarray(p, Math.min(p + 65536, data.length, capacity - offset));
      if (block.every((b) => b === 0)) continue;
      const head = Buffer.alloc(12);
      head.writeBigUInt64BE(BigInt(offset + p), 0);
      head.writeUInt32BE(block.length, 8);
      outer.update(head).update(createHash('sha256').update(block).digest());
    }
  }
  return outer.digest('hex');
}

/** contentHash of a whole raw image held in memory. */
export function contentHashOf(image: Buffer): string {
  return contentHashOfPieces([{ offset: 0, data: image }]);
}
