// Helpers of the pipeline's crash and journal tests: bundle a child-process fixture, and hash what a
// disk decrypts to.
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
