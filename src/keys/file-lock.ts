import { KeyError } from './errors.js';
import { acquireFileLock, FileLockError } from '../util/lock.js';

/**
 * The keystore's lock between processes (and between provider instances in one process): the util
 * layer's exclusive OFD lock on the record file `lockFile` (see src/util/lock.ts). Every
 * read-modify-write of the keystore runs inside it. A holder that died holds nothing (the kernel
 * dropped its lock); a live holder is waited for up to `timeoutMs`, then ERR_KEYSTORE_LOCKED names it.
 */
export async function withFileLock<T>(lockFile: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  let lock;
  try {
    lock = await acquireFileLock(lockFile, { mode: 'exclusive', record: { operation: 'keystore update', tool: 'vmseal' }, waitMs: timeoutMs });
  } catch (err) {
    if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
      throw new KeyError('ERR_KEYSTORE_LOCKED', `the keystore is ${err.message}; gave up after ${timeoutMs} ms`, { file: lockFile, cause: err });
    }
    const detail = err instanceof FileLockError ? err.message : ((err as NodeJS.ErrnoException).code ?? String(err));
    throw new KeyError('ERR_KEYSTORE_IO', `cannot take the keystore lock: ${detail}`, { file: lockFile, cause: err });
  }
  try {
    return await fn();
  } finally {
    lock.release();
  }
}
