// Crash-consistent grain allocation under simulated power loss (test/helpers/crash-fs.ts): a child
// process writes new grains, new grain tables and overwrites in batches, with a flush between batches,
// through a monolithicSparse and a twoGbMaxExtentSparse disk, plain and encrypted. At every
// durability-relevant call the child loses every write not made durable (or keeps only the last one
// of each file) and dies. Afterwards `qemu-img check` passes, the disk opens, every flushed batch
// reads back exactly, and every grain reads as one of the states the batches since then left —
// never bytes no write put there (a grain-table entry pointing at a grain whose data was lost).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { bundleFixture } from '../helpers/bundle.js';
import { runCrashChild } from '../helpers/crash-run.js';
import { crashPoints } from '../helpers/points.js';
import { createEncryptedDisk } from '../../src/disk/index.js';
import { createDisk } from '../../src/vmdk/index.js';
import { phraseLocker } from '../disk/helpers.js';
import { CAPACITY, EXTENT, GRAIN, BATCHES, crashedDiskProblem } from './fixtures/sparse-crash-scenario.js';
import { tempDir } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
let child: string;

beforeAll(async () => {
  tmp = tempDir();
  child = await bundleFixture(new URL('./fixtures/sparse-crash-child.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (child) rmSync(child, { force: true });
});

function run(folder: string, disk: string, crashAt: number, keep: string, passphrase: string | undefined) {
  const r = runCrashChild(child, [disk, ...(passphrase ? [passphrase] : [])], { root: folder, crashAt, keep });
  const flushed = [...r.stdout.matchAll(/flushed=(\d+)/g)].map((m) => Number(m[1]));
  return { ...r, flushed: flushed.length ? flushed[flushed.length - 1] : 0 };
}

/**
 * Where to crash (test/helpers/points.ts): the first and last call of each kind, the edges of the
 * run and a few spread between, the spread seeded per case so the cases together cover more calls;
 * `npm run fuzz` (VMSEAL_TEST_FULL=1) crashes at every call (30-40 per case; all pass). Every call
 * matters, even with keep 'none' between two syncs: writes already issued when the crash comes may
 * still land, as on a real device.
 */
const cases = [
  { subformat: 'monolithicSparse', encrypted: false },
  { subformat: 'twoGbMaxExtentSparse', encrypted: false },
  { subformat: 'monolithicSparse', encrypted: true },
  { subformat: 'twoGbMaxExtentSparse', encrypted: true },
] as const;

describe.each(cases)('$subformat (encrypted: $encrypted): a power loss while grains are allocated', ({ subformat, encrypted }) => {
  it.each(['none', 'last'])('leaves a disk that checks, opens and holds every flushed write (un-synced writes kept: %s)', async (keep) => {
    const tag = `${subformat}-${encrypted ? 'enc' : 'plain'}-${keep}`;
    const pristine = join(tmp.dir, `${tag}-pristine`);
    mkdirSync(pristine);
    const name = 'd.vmdk';
    const passphrase = encrypted ? 'pw' : undefined;
    const opts = { capacity: CAPACITY, subformat, grainSize: GRAIN, ...(subformat === 'twoGbMaxExtentSparse' ? { maxExtentSize: EXTENT } : {}) };
    const created = encrypted
      ? await createEncryptedDisk(join(pristine, name), { ...opts, lockers: [phraseLocker('pw')] })
      : await createDisk(join(pristine, name), opts);
    await created.close();

    const full = join(tmp.dir, `${tag}-full`);
    cpSync(pristine, full, { recursive: true });
    const total = run(full, join(full, name), 0, keep, passphrase);
    expect(total.status, total.stderr).toBe(0);
    expect(total.flushed).toBe(BATCHES.length);
    expect(total.events).toBeGreaterThan(10);
    expect(await crashedDiskProblem(join(full, name), passphrase, BATCHES.length), 'no crash').toBeUndefined();
    rmSync(full, { recursive: true, force: true });

    for (const at of crashPoints(total.events, { spread: 3, kinds: total.kinds, seed: tag.length + (keep === 'last' ? 5 : 0) })) {
      const where = `crash point ${at} of ${total.events}`;
      const folder = join(tmp.dir, `${tag}-${at}`);
      cpSync(pristine, folder, { recursive: true });
      const r = run(folder, join(folder, name), at, keep, passphrase);
      expect(r.signal, `${where}: ${r.stderr}`).toBe('SIGKILL');
      const problem = await crashedDiskProblem(join(folder, name), passphrase, r.flushed);
      expect(problem, `${where} (batches flushed: ${r.flushed})`).toBeUndefined();
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
