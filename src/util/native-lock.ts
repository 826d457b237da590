import { loadNativeAddon } from './native-addon.js';

/**
 * The file-lock calls of the native addon (native/fs_lock.cc), loaded by ./native-addon.ts.
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

let cached: NativeFileLocks | undefined;

export function nativeFileLocks(): NativeFileLocks {
  if (cached) return cached;
  const addon = loadNativeAddon() as Partial<NativeFileLocks>;
  if (typeof addon.lockOpen !== 'function') {
    // A binary built before fs_lock.cc existed.
    throw new Error('the vmseal native addon has no file-lock calls (lockOpen); rebuild it (npm run build:native)');
  }
  cached = addon as NativeFileLocks;
  return cached;
}
