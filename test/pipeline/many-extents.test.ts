// A disk with thousands of extent files is locked with a bounded number of descriptors: its
// descriptor's record file, and one `.vmseal-lock` per folder for the names of all its files.
// 1,025 extents in `npm test` (a lock per extent would show as a thousand; most of the file's time
// was creating and walking 8,193 extents), the 8,193 of issue 8 under `npm run fuzz`
// (VMSEAL_TEST_FULL=1, test/helpers/points.ts).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk } from '../../src/vmdk/index.js';
import { encryptDisk } from '../../src/pipeline/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { full } from '../helpers/points.js';

const EXTENTS = full(1025, 8193);
const TWO_GIB = 2 ** 31;
let tmp: ReturnType<typeof tempDir>;

beforeAll(() => {
  tmp = tempDir('vmseal-many-extents-');
});
afterAll(() => tmp.cleanup());

/** The targets of this process's open descriptors. */
function openFiles(): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      out.push(readlinkSync(`/proc/self/fd/${fd}`));
    } catch {
      // closed between the listing and the readlink (the listing's own descriptor)
    }
  }
  return out;
}

describe('bounded descriptors', () => {
  it(
    `an encrypt from and to ${EXTENTS}-extent twoGbMaxExtentSparse disks holds at most 3 lock files open`,
    async () => {
      const input = join(tmp.dir, 'big.vmdk');
      // Sparse extents are mostly holes: ~16 TiB of virtual size costs a few KiB per file.
      const made = await createDisk(input, { capacity: EXTENTS * TWO_GIB, subformat: 'twoGbMaxExtentSparse' });
      await made.close();
      expect(readdirSync(tmp.dir).filter((f) => f.startsWith('big-s')).length).toBe(EXTENTS);
      const before = openFiles().length;
      let during: string[] | undefined;
      const out = join(tmp.dir, 'enc.vmdk');
      const r = await encryptDisk(input, out, {
        lockers: [phraseLocker('pw')],
        // The end-of-phase event comes while every lock of the job is held, before the commit.
        onProgress: () => {
          during ??= openFiles();
        },
      });
      expect(r.subformat).toBe('twoGbMaxExtentSparse');
      expect(readdirSync(tmp.dir).filter((f) => f.startsWith('enc-s')).length).toBe(EXTENTS);
      expect(during).toBeDefined();
      const locks = during!.filter((f) => f.endsWith('.vmseal-lock'));
      // big.vmdk.vmseal-lock (input, shared), enc.vmdk.vmseal-lock (output), .vmseal-lock (every name in the folder)
      expect(locks.length).toBeLessThanOrEqual(3);
      // The input's and the staged output's extent files are open (the VMDK layer's), nothing per extent more.
      expect(during!.length - before).toBeLessThan(2 * EXTENTS + 32);
      // Nothing is left open or behind.
      expect(openFiles().filter((f) => f.endsWith('.vmseal-lock'))).toEqual([]);
      expect(readdirSync(tmp.dir).filter((f) => f.includes('vmseal'))).toEqual([]);
    },
    full(300_000, 3_600_000),
  );
});
