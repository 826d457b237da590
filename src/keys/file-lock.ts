import { open, readFile, unlink } from 'node:fs/promises';
import { KeyError } from './errors.js';
import { pidAlive } from '../util/process.js';

/**
 * An advisory lock between processes (and between instances in one process) that share a keystore: the
 * lock file is created with O_EXCL and holds "<pid> <ISO time>". Every read-modify-write of the keystore
 * runs inside it. A lock left by a process that no longer exists (same host) is removed; a live holder is
 * waited for up to `timeoutMs`, then ERR_KEYSTORE_LOCKED names the file and the holder's pid.
 */
function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function withFileLock<T>(lockFile: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let holder = 'unknown';
  for (;;) {
    try {
      const fh = await open(lockFile, 'wx', 0o600);
      try {
        await fh.writeFile(`${process.pid} ${new Date().toISOString()}\n`);
      } finally {
        await fh.close();
      }
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new KeyError('ERR_KEYSTORE_IO', `cannot create the lock file: ${(err as NodeJS.ErrnoException).code ?? String(err)}`, { file: lockFile, cause: err });
      }
    }
    const content = await readFile(lockFile, 'utf8').catch(() => '');
    const pid = Number(/^(\d+) /.exec(content)?.[1]);
    holder = Number.isInteger(pid) && pid > 0 ? `pid ${pid}` : 'unknown';
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid)) {
      // The holder died without unlocking: remove its lock (only if it is still that same lock).
      const again = await readFile(lockFile, 'utf8').catch(() => '');
      if (again === content) await unlink(lockFile).catch(() => undefined);
      continue;
    }
    if (Date.now() >= deadline) {
      throw new KeyError('ERR_KEYSTORE_LOCKED', `the keystore lock is held by ${holder}; gave up after ${timeoutMs} ms`, { file: lockFile });
    }
    await sleep(10 + Math.floor(Math.random() * 30));
  }
  try {
    return await fn();
  } finally {
    await unlink(lockFile).catch(() => undefined);
  }
}
