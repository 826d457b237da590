// Child processes of the crash and lock tests run a TypeScript fixture; node cannot run it as is,
// so it is bundled with esbuild into one ESM file first.
import { mkdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('../..', import.meta.url));

/**
 * Bundle the fixture `entry` (a .ts file: a path or a file: URL) into one ESM file inside the
 * package (node_modules/.cache/vmseal-test), so that the native addon is found from it as from the
 * package's own code. The name is unique per call; returns its path, which the caller removes.
 */
export async function bundleFixture(entry: string | URL): Promise<string> {
  const source = typeof entry === 'string' ? entry : fileURLToPath(entry);
  const outdir = join(root, 'node_modules', '.cache', 'vmseal-test');
  mkdirSync(outdir, { recursive: true });
  const outfile = join(outdir, `${basename(source, '.ts')}-${process.pid}-${Math.random().toString(36).slice(2, 8)}.mjs`);
  await build({ entryPoints: [source], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile, logLevel: 'silent' });
  return outfile;
}
