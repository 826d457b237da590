// FolderCalls (src/util/inline-fs.ts): the same answers inline (a memory-backed folder) as on the
// thread pool — a missing name is false or undefined, any other error is thrown as Node's — for the
// existence checks a job makes of its output names.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FolderCalls } from '../../src/util/inline-fs.js';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-inline-fs-'));
  writeFileSync(join(dir, 'a-file'), 'x');
  mkdirSync(join(dir, 'a-folder'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.each([true, false])('FolderCalls (inline: %s)', (inline) => {
  const calls = new FolderCalls(inline);

  it('exists: true for a file or a folder, false for a missing name, ENOTDIR thrown', async () => {
    expect(await calls.exists(join(dir, 'a-file'))).toBe(true);
    expect(await calls.exists(join(dir, 'a-folder'))).toBe(true);
    expect(await calls.exists(join(dir, 'missing'))).toBe(false);
    expect(await calls.exists(join(dir, 'missing', 'deeper'))).toBe(false);
    await expect(calls.exists(join(dir, 'a-file', 'below'))).rejects.toMatchObject({ code: 'ENOTDIR' });
  });

  it('lstat: the stats of a name, undefined for a missing one', async () => {
    expect((await calls.lstat(join(dir, 'a-file')))?.isFile()).toBe(true);
    expect(await calls.lstat(join(dir, 'missing'))).toBeUndefined();
    expect(await calls.lstat(join(dir, 'a-file', 'below'))).toBeUndefined();
  });
});
