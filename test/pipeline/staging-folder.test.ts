// The fixed per-image costs of a copy job's staging (src/pipeline/staging.ts): on a memory-backed
// folder its metadata calls run inline (src/util/inline-fs.ts), and a caller that listed the output
// folder (a batch, once for all its images) hands the job that listing instead of a listing per job.
import { existsSync, mkdirSync, readdirSync, readFileSync, statfsSync, writeFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertDisk } from '../../src/pipeline/index.js';
import { openDisk } from '../../src/vmdk/index.js';
import { TMPFS_MAGIC } from '../../src/util/inline-io.js';
import { patternBytes, tempDir } from '../disk/helpers.js';

const MiB = 1024 * 1024;
let tmp: ReturnType<typeof tempDir>;
let input: string;

beforeAll(() => {
  tmp = tempDir('vmseal-staging-folder-');
  input = join(tmp.dir, 'in.raw');
  writeFileSync(input, patternBytes(2 * MiB, 9));
});
afterAll(() => tmp.cleanup());

/** A staging folder of `name` left in `dir` by a job that was killed before its commit. */
function deadStage(dir: string, name: string): string {
  const stage = `.${name}.vmseal-tmp-999999-deadbeef`;
  mkdirSync(join(dir, stage));
  writeFileSync(join(dir, stage, 'owner.json'), JSON.stringify({ pid: 999999, host: hostname() }));
  writeFileSync(join(dir, stage, name), 'half written');
  return stage;
}

async function readAll(path: string): Promise<Buffer> {
  const d = await openDisk(path);
  try {
    const buf = Buffer.alloc(d.capacity);
    await d.readInto(0, buf);
    return buf;
  } finally {
    await d.close();
  }
}

describe('a copy job in a memory-backed folder (tmpfs)', () => {
  const shm = existsSync('/dev/shm') && statfsSync('/dev/shm').type === TMPFS_MAGIC;
  it.skipIf(!shm)('commits its output, leaves no staging folder, and removes a dead job stage', async () => {
    const dir = mkdtempSync(join('/dev/shm', 'vmseal-staging-folder-'));
    try {
      const out = join(dir, 'out.vmdk');
      deadStage(dir, 'out.vmdk');
      const r = await convertDisk(input, out, { subformat: 'monolithicSparse' });
      expect(r.bytesProcessed).toBe(2 * MiB);
      expect(readdirSync(dir)).toEqual(['out.vmdk']);
      expect((await readAll(out)).equals(readFileSync(input))).toBe(true);
      // The next job on the name with force replaces it the same way.
      await convertDisk(input, out, { subformat: 'monolithicSparse', force: true });
      expect(readdirSync(dir)).toEqual(['out.vmdk']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('folderEntries: the output folder as the caller listed it', () => {
  it('a dead job stage among the entries is removed; one the listing does not name is not looked for', async () => {
    const dir = join(tmp.dir, 'listed');
    mkdirSync(dir);
    const seen = deadStage(dir, 'a.vmdk');
    await convertDisk(input, join(dir, 'a.vmdk'), { subformat: 'monolithicSparse', folderEntries: [seen] });
    expect(readdirSync(dir)).toEqual(['a.vmdk']);
    // Listed before the stage appeared: the job trusts the listing and does not list the folder again.
    const unseen = deadStage(dir, 'b.vmdk');
    await convertDisk(input, join(dir, 'b.vmdk'), { subformat: 'monolithicSparse', folderEntries: ['a.vmdk'] });
    expect(readdirSync(dir).sort()).toEqual([unseen, 'a.vmdk', 'b.vmdk'].sort());
    // Without a listing the job lists the folder and removes it.
    await convertDisk(input, join(dir, 'b.vmdk'), { subformat: 'monolithicSparse', force: true });
    expect(readdirSync(dir).sort()).toEqual(['a.vmdk', 'b.vmdk']);
  });

  it('refuses a folderEntries that is not an array of names', async () => {
    const bad = convertDisk(input, join(tmp.dir, 'bad.vmdk'), { subformat: 'monolithicSparse', folderEntries: 'x' as unknown as string[] });
    await expect(bad).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message: expect.stringMatching(/folderEntries/) });
    expect(existsSync(join(tmp.dir, 'bad.vmdk'))).toBe(false);
  });
});
