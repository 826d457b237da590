import { loadNative } from './native.js';
import { checkThreads, chooseImplementation } from './validate.js';

export interface XtsInfo {
  /** What `new XtsCipher(key)` uses: VMSEAL_XTS_IMPL if set, else the fastest available. */
  implementation: string;
  /** Implementations this CPU and OS can run, fastest first (always ends with "portable"). */
  available: string[];
  /** CPU features as detected by CPUID/XGETBV (all false on non-x86 machines). */
  cpu: Record<string, boolean>;
  /** Size of the thread pool used by encryptAsync/decryptAsync. */
  threads: number;
}

/**
 * Report the native core: chosen and available implementations, CPU flags, pool size. Throws the
 * same error as `new XtsCipher` when VMSEAL_XTS_IMPL names an unknown or unavailable implementation.
 */
export function xtsInfo(): XtsInfo {
  const info = loadNative().info();
  return {
    implementation: chooseImplementation(undefined, info.available),
    available: [...info.available],
    cpu: { ...info.cpu },
    threads: info.threads,
  };
}

/** Resize the addon's thread pool (per Node thread: the main thread and each worker have their own). */
export function setXtsThreads(threads: number): void {
  loadNative().setThreads(checkThreads(threads, 'threads'));
}

/** The current pool size (default: the number of CPU cores). */
export function getXtsThreads(): number {
  return loadNative().getThreads();
}
