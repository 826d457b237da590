// createFileAtomicSync (src/util/atomic-file.ts): createFileAtomic's steps with synchronous calls,
// for the backup's chunk-writer threads — whole file or nothing under the final name, mode exact,
// never replacing a file, no temp file left, and the same behaviour without hard links.
import * as fs from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createFileAtomic, createFileAtomicSync, isTempNameOf, tempName, type SyncFileCalls } from '../../src/util/atomic-file.js';
import { tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-atomic-file-');
});
afterAll(() => tmp.cleanup());

/** node:fs's calls, with the ones named in `fail` throwing an error of the given code, and every call recorded. */
function calls(fail: Partial<Record<keyof SyncFileCalls, string>> = {}): SyncFileCalls & { log: string[] } {
  const log: string[] = [];
  const wrap = <K extends keyof SyncFileCalls>(name: K): SyncFileCalls[K] =>
    ((...args: unknown[]) => {
      log.push(name);
      const code = fail[name];
      if (code !== undefined) throw Object.assign(new Error(`${name}: injected ${code}`), { code });
      return (fs[name] as (...a: unknown[]) => unknown)(...args);
    }) as SyncFileCalls[K];
  return {
    log,
    openSync: wrap('openSync'),
    writeSync: wrap('writeSync'),
    fchmodSync: wrap('fchmodSync'),
    fsyncSync: wrap('fsyncSync'),
    closeSync: wrap('closeSync'),
    linkSync: wrap('linkSync'),
    unlinkSync: wrap('unlinkSync'),
  };
}

const leftovers = (dir: string, file: string): string[] => fs.readdirSync(dir).filter((n) => isTempNameOf(file, n));

describe('createFileAtomicSync', () => {
  it('creates the file whole with the exact mode, in createFileAtomic’s steps, and never replaces one', async () => {
    const dir = join(tmp.dir, 'a');
    fs.mkdirSync(dir);
    const file = join(dir, 'f');
    const io = calls();
    const old = process.umask(0o077);
    try {
      expect(createFileAtomicSync(io, file, Buffer.from('hello'), 0o640)).toBe(true);
    } finally {
      process.umask(old);
    }
    expect(fs.readFileSync(file, 'utf8')).toBe('hello');
    expect(fs.statSync(file).mode & 0o777).toBe(0o640);
    expect(io.log).toEqual(['openSync', 'writeSync', 'fchmodSync', 'fsyncSync', 'closeSync', 'linkSync', 'unlinkSync']);
    expect(createFileAtomicSync(calls(), file, Buffer.from('other'), 0o600)).toBe(false);
    expect(await createFileAtomic(file, Buffer.from('other'), 0o600)).toBe(false);
    expect(fs.readFileSync(file, 'utf8')).toBe('hello');
    expect(leftovers(dir, file)).toEqual([]);
  });

  it('uses the temp name it is given (a tempName of the file)', () => {
    const dir = join(tmp.dir, 'b');
    fs.mkdirSync(dir);
    const file = join(dir, 'f');
    const given = tempName(file);
    const io = calls({ linkSync: 'EIO' });
    const opened: string[] = [];
    const open = io.openSync;
    io.openSync = ((p: fs.PathLike, ...rest: unknown[]) => {
      opened.push(String(p));
      return (open as (...a: unknown[]) => number)(p, ...rest);
    }) as SyncFileCalls['openSync'];
    expect(() => createFileAtomicSync(io, file, Buffer.from('x'), 0o600, given)).toThrow(/EIO/);
    expect(opened).toEqual([given]);
    expect(fs.existsSync(file)).toBe(false);
    expect(leftovers(dir, file)).toEqual([]);
  });

  it('leaves neither the file nor a temp file when a write or fsync fails', () => {
    const dir = join(tmp.dir, 'c');
    fs.mkdirSync(dir);
    const file = join(dir, 'f');
    expect(() => createFileAtomicSync(calls({ fsyncSync: 'EIO' }), file, Buffer.from('x'), 0o600)).toThrow(expect.objectContaining({ code: 'EIO' }));
    expect(() => createFileAtomicSync(calls({ writeSync: 'ENOSPC' }), file, Buffer.from('x'), 0o600)).toThrow(expect.objectContaining({ code: 'ENOSPC' }));
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  it('without hard links, creates the final name exclusively instead (and still never replaces a file)', () => {
    const dir = join(tmp.dir, 'd');
    fs.mkdirSync(dir);
    const file = join(dir, 'f');
    expect(createFileAtomicSync(calls({ linkSync: 'EPERM' }), file, Buffer.from('abc'), 0o600)).toBe(true);
    expect(fs.readFileSync(file, 'utf8')).toBe('abc');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(createFileAtomicSync(calls({ linkSync: 'ENOTSUP' }), file, Buffer.from('zzz'), 0o600)).toBe(false);
    expect(fs.readFileSync(file, 'utf8')).toBe('abc');
    expect(fs.readdirSync(dir)).toEqual(['f']);
  });
});
