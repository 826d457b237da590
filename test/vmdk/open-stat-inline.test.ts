// HostFile.open asks statfs where a file lives before it fstats it: on tmpfs the fstat then runs on
// the event loop (inline), one thread-pool round trip less per opened file (a batch opens each
// image's source this way); elsewhere, or with inline I/O off, it stays on libuv's pool. Seen from
// outside with `strace -f` on the built package in a child process.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const execFileP = promisify(execFile);
const DIST = fileURLToPath(new URL('../../dist/index.js', import.meta.url));
const haveStrace = await execFileP('strace', ['-V']).then(
  () => true,
  () => false,
);
const haveShm = existsSync('/dev/shm');

let dir: string;
beforeAll(() => {
  if (haveShm) dir = mkdtempSync('/dev/shm/vmseal-open-stat-');
});
afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Which thread fstat'd `path` while a child opened it with openPlainDisk: 'main' or 'pool'. */
async function fstatThreadOf(path: string, env: NodeJS.ProcessEnv): Promise<Array<'main' | 'pool'>> {
  const log = `${path}.strace`;
  const script = [
    `const { openPlainDisk } = await import(${JSON.stringify(DIST)});`,
    `const d = await openPlainDisk(${JSON.stringify(path)}, { format: 'raw', readOnly: true });`,
    "if (d.capacity !== 1 << 20) throw new Error('wrong size');",
    'await d.close();',
  ].join('\n');
  await execFileP(
    'strace',
    ['-f', '-qq', '-e', 'trace=execve,openat,close,statx,newfstatat,fstat', '-o', log, process.execPath, '--input-type=module', '-e', script],
    {
      env: { ...process.env, ...env },
    },
  );
  const lines = readFileSync(log, 'utf8').split('\n');
  const main = /^(\d+)\s+execve\(/.exec(lines.find((l) => /^\d+\s+execve\(/.test(l)) ?? '')?.[1];
  if (main === undefined) throw new Error('strace logged no execve');
  // The file's descriptor from its open to its close (the number is reused afterwards).
  const opened = lines.findIndex((l) => l.includes(`openat(AT_FDCWD, "${path}",`));
  expect(opened).toBeGreaterThan(0);
  const fd = / = (\d+)$/.exec(lines[opened]!)![1]!;
  const closed = lines.findIndex((l, i) => i > opened && l.includes(` close(${fd})`));
  const during = lines.slice(opened + 1, closed < 0 ? undefined : closed);
  const fstats = during.filter((l) => (/\s(statx|newfstatat)\(/.test(l) ? l.includes(`(${fd}, "",`) : l.includes(` fstat(${fd},`)));
  return fstats.map((l) => (l.startsWith(`${main} `) ? 'main' : 'pool'));
}

describe.skipIf(!haveStrace || !haveShm)('HostFile.open on tmpfs', () => {
  it('fstats the file on the event loop, once', async () => {
    const path = join(dir, 'inline.img');
    writeFileSync(path, Buffer.alloc(1 << 20, 1));
    expect(await fstatThreadOf(path, {})).toEqual(['main']);
  });

  it('leaves it on the pool when inline I/O is off (VMSEAL_INLINE_IO=0)', async () => {
    const path = join(dir, 'pooled.img');
    writeFileSync(path, Buffer.alloc(1 << 20, 1));
    expect(await fstatThreadOf(path, { VMSEAL_INLINE_IO: '0' })).toEqual(['pool']);
  });
});
