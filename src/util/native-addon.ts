import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { findPackageRoot } from './package-root.js';

/**
 * The native addon as the util layer sees it: the same binary the XTS layer loads (Node caches it,
 * so this is one module), loaded the same way as src/xts/native.ts does (VMSEAL_NATIVE_PATH, else
 * node-gyp-build from the package root), so that the util layer does not depend on the XTS layer.
 * Callers (native-lock.ts, native-writeback.ts) check that the calls they need are there.
 */
const requireFromHere = createRequire(import.meta.url);
let cached: Record<string, unknown> | undefined;

export function loadNativeAddon(): Record<string, unknown> {
  if (cached) return cached;
  const path = process.env.VMSEAL_NATIVE_PATH;
  if (path) {
    cached = requireFromHere(resolve(path)) as Record<string, unknown>;
  } else {
    const root = findPackageRoot();
    if (!root) throw new Error('vmseal native addon: the package root (package.json named "vmseal") was not found');
    const nodeGypBuild = requireFromHere('node-gyp-build') as (dir: string) => unknown;
    cached = nodeGypBuild(root) as Record<string, unknown>;
  }
  return cached;
}
