// Deallocating grains (WRITE_ZEROES/TRIM on a sparse export) under simulated power loss
// (test/helpers/crash-fs.ts): at every durability-relevant call, un-synced writes are lost (or only
// the last of each file kept); the disk must then pass `qemu-img check`, open (data check), and
// every grain must read one of the values it had — old data, zeros or new data, whole — never noise.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { bundleFixture } from '../helpers/bundle.js';
import { runCrashChild } from '../helpers/crash-run.js';
import { createEncryptedDisk, openDisk } from '../../src/disk/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { run as runTool } from './helpers.js';

const GRAIN = 64 * 1024;
let tmp: ReturnType<typeof tempDir>;
let child: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-zero-crash-');
  child = await bundleFixture(new URL('./fixtures/zero-crash-child.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (child) rmSync(child, { force: true });
});

function run(folder: string, disk: string, crashAt: number, keep: string) {
  return runCrashChild(child, [disk], { root: folder, crashAt, keep });
}

/** A folder on a tmpfs, where the disk's small writes run inline (synchronous calls), or undefined without one. */
function memoryFolder(): string | undefined {
  if (!existsSync('/dev/shm') || statfsSync('/dev/shm').type !== 0x01021994) return undefined;
  return mkdtempSync('/dev/shm/vmseal-zero-crash-');
}

/** The byte a grain reads as, or -1 when it is not one byte value all through. */
function grainValue(buf: Buffer, g: number): number {
  const grain = buf.subarray(g * GRAIN, (g + 1) * GRAIN);
  return grain.equals(Buffer.alloc(GRAIN, grain[0])) ? grain[0] : -1;
}

describe('a power loss while grains are deallocated', () => {
  it.each(['none', 'last'])('leaves a disk that checks, opens and reads old data or zeros (un-synced writes kept: %s)', async (keep) => {
    const pristine = join(tmp.dir, `${keep}-pristine`);
    mkdirSync(pristine);
    const name = 'd.vmdk';
    const d = await createEncryptedDisk(join(pristine, name), { capacity: 1 << 20, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    await d.write(0, Buffer.alloc(8 * GRAIN, 0xaa));
    await d.close();

    const full = join(tmp.dir, `${keep}-full`);
    cpSync(pristine, full, { recursive: true });
    const total = run(full, join(full, name), 0, keep);
    expect(total.status, total.stderr).toBe(0);
    expect(total.events).toBeGreaterThan(3);
    // On a tmpfs the same job makes its small writes with writeSync: the layer sees the same calls
    // (a layer that saw only fs/promises counted 2 of its 9 calls there: no crash point fell on a write).
    const shm = memoryFolder();
    if (shm) {
      try {
        cpSync(pristine, shm, { recursive: true });
        const inMemory = run(shm, join(shm, name), 0, keep);
        expect(inMemory.status, inMemory.stderr).toBe(0);
        expect(inMemory.kinds).toBe(total.kinds);
      } finally {
        rmSync(shm, { recursive: true, force: true });
      }
    }

    // What each grain may read after a crash at any point.
    const allowed = [[0xaa], [0xaa, 0], [0xaa, 0], [0xaa, 0], [0xaa, 0], [0xaa, 0], [0xaa, 0], [0xaa]];
    for (let at = 1; at <= total.events + 1; at++) {
      const folder = join(tmp.dir, `${keep}-${at}`);
      cpSync(at <= total.events ? pristine : full, folder, { recursive: true });
      if (at <= total.events) {
        const r = run(folder, join(folder, name), at, keep);
        expect(r.signal, `crash point ${at}: ${r.stderr}`).toBe('SIGKILL');
      }
      const path = join(folder, name);
      expect(await runTool('qemu-img', ['check', '-f', 'vmdk', path]), `crash point ${at}`).toMatch(/No errors/);
      const disk = await openDisk(path, { keys: { passphrase: 'pw' }, readOnly: true }).catch((err: unknown) => {
        throw new Error(`crash point ${at} of ${total.events}: ${String(err)}`);
      });
      const all = await disk.read(0, 8 * GRAIN);
      await disk.close();
      for (let g = 0; g < 8; g++) expect(allowed[g], `crash point ${at}, grain ${g}`).toContain(grainValue(all, g));
      if (at > total.events) {
        // No crash: the end state exactly (unit 0's grain kept its data).
        expect([0, 1, 2, 3, 4, 5, 6, 7].map((g) => grainValue(all, g))).toEqual([0xaa, 0, 0, 0, 0, 0, 0, 0xaa]);
      }
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
