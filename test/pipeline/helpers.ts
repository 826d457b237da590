// Helpers of the pipeline's crash and journal tests: bundle a child-process fixture, and hash what a
// disk decrypts to, and an independent implementation of verify's contentHash.
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { openDisk } from '../../src/disk/index.js';
import { sha256 } from '../disk/helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');

/**
 * Bundle test/pipeline/fixtures/<name>.ts into one ESM file inside the package (node_modules/.cache),
 * so that the native addon is found from it. Returns the file's path; the caller removes it.
 */
export async function bundleFixture(name: string): Promise<string> {
  const outdir = join(root, 'node_modules', '.cache', 'vmseal-test');
  mkdirSync(outdir, { recursive: true });
  const outfile = join(outdir, `${name}-${process.pid}-${Math.random().toString(36).slice(2, 8)}.mjs`);
  await build({
    entryPoints: [join(here, 'fixtures', `${name}.ts`)],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile,
    logLevel: 'silent',
  });
  return outfile;
}

/** SHA-256 of the plaintext of the encrypted disk at `disk`, opened read-only with `passphrase`. */
export async function plainHash(disk: string, passphrase: string): Promise<string> {
  const d = await openDisk(disk, { keys: { passphrase }, readOnly: true });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
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
