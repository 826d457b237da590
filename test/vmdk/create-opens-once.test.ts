// createDisk returns the monolithicSparse disk or raw image it wrote from the file it still holds,
// instead of opening the new file again by name (five trips through libuv's pool per new disk, and
// whatever file had taken the name meanwhile would be opened). Counted with strace on the built
// package in a child process: one openat of the new file.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
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

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-create-once-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The openat calls of `path` while a child creates it with createDisk, writes to it and closes it. */
async function opensOf(path: string, subformat: string): Promise<string[]> {
  const log = `${path}.strace`;
  const script = [
    `const { createDisk, openPlainDisk } = await import(${JSON.stringify(DIST)});`,
    `const d = await createDisk(${JSON.stringify(path)}, { capacity: 4 << 20, subformat: ${JSON.stringify(subformat)} });`,
    'await d.write(65536, Buffer.alloc(65536, 9));',
    'await d.flush();',
    'await d.close();',
    // Read back through a fresh open: the disk written through the kept handle is whole.
    `const r = await openPlainDisk(${JSON.stringify(path)}, { readOnly: true, format: ${JSON.stringify(subformat === 'raw' ? 'raw' : 'vmdk')} });`,
    'const b = Buffer.alloc(65536); await r.readInto(65536, b); await r.close();',
    "if (!b.every((x) => x === 9)) throw new Error('the data did not read back');",
  ].join('\n');
  await execFileP('strace', ['-f', '-qq', '-e', 'trace=openat', '-o', log, process.execPath, '--input-type=module', '-e', script]);
  const lines = (await readFile(log, 'utf8')).split('\n').filter((l) => l.includes(`"${path}"`));
  // The read-back open is the last one; the ones before it are createDisk's.
  return lines.slice(0, -1);
}

describe.skipIf(!haveStrace)('createDisk', () => {
  it.each(['monolithicSparse', 'raw'])('opens a new %s file once', async (subformat) => {
    const path = join(dir, `d-${subformat}.${subformat === 'raw' ? 'img' : 'vmdk'}`);
    const opens = await opensOf(path, subformat);
    expect(opens.length, opens.join('\n')).toBe(1);
    expect(opens[0]).toMatch(/O_CREAT/);
  });
});
