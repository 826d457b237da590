import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** findPackageRoot() of this module: null until asked. */
let ownRoot: string | undefined | null = null;

/**
 * The directory of the package.json named "vmseal" at or above this module: src/util/ under
 * vitest, dist/ in the built package (ESM, and CJS where tsup's shim provides import.meta.url).
 * The native addon is looked for there (by src/util/native-lock.ts and src/xts/native.ts).
 */
export function findPackageRoot(from?: string): string | undefined {
  if (from !== undefined) return walkUp(from);
  // The util and XTS layers both ask when they load the addon: one walk (and package.json read) per process.
  if (ownRoot === null) ownRoot = walkUp(dirname(fileURLToPath(import.meta.url)));
  return ownRoot;
}

function walkUp(from: string): string | undefined {
  let dir = resolve(from);
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest)) {
      try {
        if ((JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === 'vmseal') return dir;
      } catch {
        // an unreadable or foreign package.json on the way up: keep walking
      }
    }
    const parent = dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}
