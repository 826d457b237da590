import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { XtsError } from './errors.js';
import { findPackageRoot } from '../util/package-root.js';
import { requireAddonIn } from '../util/native-addon.js';

export { findPackageRoot };
import { XTS_KEY_BYTES_128, XTS_KEY_BYTES_256, XTS_MAX_THREADS, XTS_MAX_UNIT_SIZE, XTS_MIN_UNIT_SIZE } from './constants.js';

/** An opaque cipher handle made by the addon's createCipher (owns the native key schedule). */
export interface NativeCipherHandle {
  readonly __nativeXtsCipher: unique symbol;
}

/** The raw surface of build/Release/vmseal_xts.node (see native/addon.cc). */
export interface NativeXts {
  createCipher(key: Uint8Array, implementation?: string): NativeCipherHandle;
  dispose(cipher: NativeCipherHandle): void;
  cipherInfo(cipher: NativeCipherHandle): { implementation: string; keyBits: number; disposed: boolean };
  encrypt(cipher: NativeCipherHandle, data: Uint8Array, unitSize: number, firstUnit: number | bigint, out: Uint8Array): void;
  decrypt(cipher: NativeCipherHandle, data: Uint8Array, unitSize: number, firstUnit: number | bigint, out: Uint8Array): void;
  encryptAsync(cipher: NativeCipherHandle, data: Uint8Array, unitSize: number, firstUnit: number | bigint, out: Uint8Array, threads?: number): Promise<void>;
  decryptAsync(cipher: NativeCipherHandle, data: Uint8Array, unitSize: number, firstUnit: number | bigint, out: Uint8Array, threads?: number): Promise<void>;
  encryptUnit(cipher: NativeCipherHandle, data: Uint8Array, tweak: Uint8Array, out: Uint8Array): void;
  decryptUnit(cipher: NativeCipherHandle, data: Uint8Array, tweak: Uint8Array, out: Uint8Array): void;
  /** A zero-filled Buffer over memory the addon owns; Node will not transfer or detach it. */
  allocateBuffer(size: number): Buffer;
  info(): { best: string; available: string[]; implementations: string[]; cpu: Record<string, boolean>; threads: number };
  setThreads(threads: number): void;
  getThreads(): number;
  readonly KEY_BYTES_128: number;
  readonly KEY_BYTES_256: number;
  readonly MIN_UNIT_SIZE: number;
  readonly MAX_UNIT_SIZE: number;
  readonly MAX_THREADS: number;
}

const requireFromHere = createRequire(import.meta.url);
let cached: NativeXts | undefined;

function describePlatform(): string {
  return `platform ${process.platform}, arch ${process.arch}, Node ${process.versions.node} (ABI ${process.versions.modules}, N-API ${process.versions.napi})`;
}

function loadFailure(detail: string, cause: unknown): XtsError {
  return new XtsError(
    'ERR_NATIVE_NOT_FOUND',
    `vmseal's native XTS addon could not be loaded for ${describePlatform()}: ${detail}. ` +
      'Run `npm rebuild vmseal` to build it from source (needs Python 3, make and a C++17 compiler), ' +
      'or `npm run build:native` in a source checkout.',
    { cause },
  );
}

/** Load the addon once (see loadAddon); later calls return the same module. */
export function loadNative(): NativeXts {
  cached ??= loadAddon({ path: process.env.VMSEAL_NATIVE_PATH || undefined, root: findPackageRoot() });
  return cached;
}

let availableCached: readonly string[] | undefined;

/**
 * The implementations this CPU and OS run, fastest first (the addon's info().available), asked
 * once: neither the CPU nor the loaded binary changes while the process runs, and info() builds a
 * fresh report of every CPU flag on each call (≈3 µs), which every new cipher paid.
 */
export function availableImplementations(): readonly string[] {
  availableCached ??= Object.freeze([...loadNative().info().available]);
  return availableCached;
}

/**
 * Load and check an addon binary: `path` names an explicit .node file (VMSEAL_NATIVE_PATH; the
 * sanitizer build uses it); otherwise node-gyp-build looks in <root>/prebuilds/<platform>-<arch>/
 * and then <root>/build/Release/. Failures throw XtsError ERR_NATIVE_NOT_FOUND saying what was
 * looked for and what to run.
 */
export function loadAddon(source: { path?: string; root?: string }): NativeXts {
  let addon: NativeXts;
  if (source.path) {
    try {
      addon = requireFromHere(resolve(source.path)) as NativeXts;
    } catch (err) {
      throw loadFailure(`VMSEAL_NATIVE_PATH=${source.path} did not load (${(err as Error).message})`, err);
    }
  } else {
    const root = source.root;
    if (!root) throw loadFailure('the package root (package.json named "vmseal") was not found above ' + fileURLToPath(import.meta.url), undefined);
    try {
      addon = requireAddonIn(root) as NativeXts;
    } catch (err) {
      const message = (err as Error).message ?? String(err);
      const detail = message.startsWith('No native build was found')
        ? `no build in ${join(root, 'prebuilds')} or ${join(root, 'build', 'Release')}`
        : `loading the binary failed (${message})`;
      throw loadFailure(detail, err);
    }
  }
  // The TypeScript checks and the native ones must agree; a stale binary from an older build
  // would not.
  const expectedConstants = {
    KEY_BYTES_128: XTS_KEY_BYTES_128,
    KEY_BYTES_256: XTS_KEY_BYTES_256,
    MIN_UNIT_SIZE: XTS_MIN_UNIT_SIZE,
    MAX_UNIT_SIZE: XTS_MAX_UNIT_SIZE,
    MAX_THREADS: XTS_MAX_THREADS,
  } as const;
  for (const [name, value] of Object.entries(expectedConstants)) {
    if (addon?.[name as keyof typeof expectedConstants] !== value) {
      throw loadFailure(`the binary does not match this version of vmseal (${name} is not ${value}); rebuild it`, undefined);
    }
  }
  return addon;
}
