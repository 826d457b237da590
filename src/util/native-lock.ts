import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { findPackageRoot } from './package-root.js';

/**
 * The file-lock calls of the native addon (native/fs_lock.cc). The addon is the same binary the XTS
 * layer loads (Node caches it, so this is one module); it is loaded here directly, the same way as
 * src/xts/native.ts does (VMSEAL_NATIVE_PATH, else node-gyp-build from the package root), so the
 * util layer does not depend on the XTS layer.
 */
export interface NativeFileLocks {
  /** Open (creating, mode 0600) a file O_RDWR|O_CLOEXEC, or O_RDONLY|O_CLOEXEC without creating when readOnly. */
  lockOpen(path: string, readOnly?: boolean): number;
  lockStat(fd: number): { dev: bigint; ino: bigint; nlink: number };
  /** true: taken (or released); false: another open file description holds a conflicting lock. */
  lockSet(fd: number, type: 'read' | 'write' | 'unlock', start: number, len: number): boolean;
  /** null when `type` could be taken now, else the first conflicting lock. */
  lockGet(fd: number, type: 'read' | 'write', start: number, len: number): { type: 'read' | 'write'; start: number; len: number } | null;
  lockClose(fd: number): void;
}

const requireFromHere = createRequire(import.meta.url);
let addonCache: Record<string, unknown> | undefined;
let cached: NativeFileLocks | undefined;

/** The addon's exports, loaded once (VMSEAL_NATIVE_PATH, else node-gyp-build from the package root). */
export function nativeAddon(): Record<string, unknown> {
  if (addonCache) return addonCache;
  const path = process.env.VMSEAL_NATIVE_PATH;
  if (path) {
    addonCache = requireFromHere(resolve(path)) as Record<string, unknown>;
  } else {
    const root = findPackageRoot();
    if (!root) throw new Error('vmseal native addon: the package root (package.json named "vmseal") was not found');
    const nodeGypBuild = requireFromHere('node-gyp-build') as (dir: string) => unknown;
    addonCache = nodeGypBuild(root) as Record<string, unknown>;
  }
  return addonCache;
}

export function nativeFileLocks(): NativeFileLocks {
  if (cached) return cached;
  const addon = nativeAddon() as Partial<NativeFileLocks>;
  if (typeof addon.lockOpen !== 'function') {
    // A binary built before fs_lock.cc existed.
    throw new Error('the vmseal native addon has no file-lock calls (lockOpen); rebuild it (npm run build:native)');
  }
  cached = addon as NativeFileLocks;
  return cached;
}
