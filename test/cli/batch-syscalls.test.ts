// The fixed system calls of an image in a batch on tmpfs, seen from outside by `strace -f` (every
// thread): the output's folder is statfs'd once per image and the files the job makes in its
// staging folder are not (createDisk gets the folder's answer), and the new output file's size
// change and syncs run on the thread that converts the image (inline: src/vmdk/file.ts), not on a
// thread of libuv's pool.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, cleanEnv } from './run-cli.js';

const hasStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;
const hasShm = existsSync('/dev/shm');

let dir: string;
beforeEach(() => {
  dir = mkdtempSync('/dev/shm/vmseal-batch-syscalls-');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** strace lines of `vmseal convert DIR OUT --jobs 1` over `n` 1 MiB raw images in tmpfs, and the main thread's id. */
function traceBatch(n: number): { lines: string[]; main: string } {
  const input = join(dir, 'in');
  mkdirSync(input);
  for (let i = 0; i < n; i++) writeFileSync(join(input, `d${i}.img`), Buffer.alloc(1 << 20, i + 1));
  const log = join(dir, 'strace.txt');
  const r = spawnSync(
    'strace',
    [
      '-f',
      '-qq',
      '-e',
      'trace=execve,statfs,fstatfs,ftruncate,fsync,fdatasync',
      '-o',
      log,
      process.execPath,
      BIN,
      'convert',
      input,
      join(dir, 'out'),
      '--subformat',
      'monolithicSparse',
      '--encrypt',
      '--jobs',
      '1',
    ],
    { env: cleanEnv({ VMSEAL_HOME: join(dir, 'home') }), encoding: 'utf8', timeout: 60_000 },
  );
  if (r.status !== 0) throw new Error(`vmseal convert failed: ${r.stderr}`);
  const lines = readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l !== '');
  // node's main thread: the process strace started (its execve).
  const main = /^(\d+)\s+execve\(/.exec(lines.find((l) => /^\d+\s+execve\(/.test(l)) ?? '')?.[1];
  if (main === undefined) throw new Error('strace logged no execve');
  return { lines, main };
}

describe.skipIf(!hasStrace || !hasShm)('an image of a batch on tmpfs', () => {
  it('statfs its output folder once, never a file of its staging folder', () => {
    const { lines } = traceBatch(3);
    const statfs = lines.filter((l) => /\bstatfs\(/.test(l));
    expect(statfs.filter((l) => l.includes('.vmseal-tmp-'))).toEqual([]);
    expect(statfs.filter((l) => l.includes(`statfs("${join(dir, 'out')}"`))).toHaveLength(3);
  });

  it("grows and syncs the output file on the image's thread, not on the thread pool", () => {
    const { lines, main } = traceBatch(2);
    const on = (thread: 'main' | 'others', call: RegExp): string[] => lines.filter((l) => call.test(l) && l.startsWith(`${main} `) === (thread === 'main'));
    // Each staged output grows to its tables' size once and is fdatasynced once before its commit
    // (the keystore's own writes, on the pool, use fsync and empty their lock records with size 0).
    const grow = /\bftruncate\(\d+, [1-9]\d*\)/;
    expect(on('main', grow)).toHaveLength(2);
    expect(on('others', grow)).toEqual([]);
    expect(on('main', /\bfdatasync\(/)).toHaveLength(2);
    expect(on('others', /\bfdatasync\(/)).toEqual([]);
  });
});
