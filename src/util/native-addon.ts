import { createRequire } from 'node:module';
import { readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { findPackageRoot } from './package-root.js';

/**
 * The native addon as the util layer sees it: the same binary the XTS layer loads (Node caches it,
 * so this is one module), loaded the same way as src/xts/native.ts does (VMSEAL_NATIVE_PATH, else
 * requireAddonIn the package root), so that the util layer does not depend on the XTS layer.
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
    cached = requireAddonIn(root) as Record<string, unknown>;
  }
  return cached;
}

/**
 * The addon binary of the package at `root`, as node-gyp-build finds it: the first `.node` file in
 * build/Release (a source build), else its other places (build/Debug, prebuilds/). The first case
 * is looked at here: loading node-gyp-build costs more than the addon itself (a CommonJS module,
 * package.json files read, ≈4 ms of CPU in every process that uses the addon). With node-gyp-build's
 * own settings (PREBUILDS_ONLY, VMSEAL_PREBUILD) it decides alone.
 */
export function requireAddonIn(root: string): unknown {
  if (!process.env.PREBUILDS_ONLY && !process.env.VMSEAL_PREBUILD) {
    const release = join(root, 'build', 'Release');
    let first: string | undefined;
    try {
      first = readdirSync(release).find((f) => f.endsWith('.node'));
    } catch {
      // no source build: node-gyp-build looks further
    }
    if (first !== undefined) return requireFromHere(join(release, first));
  }
  const nodeGypBuild = requireFromHere('node-gyp-build') as (dir: string) => unknown;
  return nodeGypBuild(root);
}
