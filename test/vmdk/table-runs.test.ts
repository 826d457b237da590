// Grain tables held as runs (src/vmdk/table-runs.ts): the answers open() and the table checks get
// from the runs match those of the plain sorted list of every table, for qemu's layout (one run per
// directory), for shuffled and gapped directories, and for corrupt ones; a new sparse disk's
// directories are written once and not read back.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { TableRuns } from '../../src/vmdk/table-runs.js';
import { createDisk, openDisk } from '../../src/vmdk/index.js';
import { HostFile } from '../../src/vmdk/file.js';
import { MiB, tempDir } from './helpers.js';

const GT_SEC = 4;

/** A seeded generator (xorshift32), so a failure reproduces. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** The reference: the start of a table overlapping [s, s + len), from the sorted list of every table. */
function tableAtRef(dirs: Uint32Array[], s: number, len: number): number | undefined {
  const all = dirs.flatMap((d) => [...d].filter((x) => x !== 0)).sort((a, b) => a - b);
  let found: number | undefined;
  for (const t of all) if (t < s + len && t + GT_SEC > s) found = t;
  return found;
}

describe('TableRuns', () => {
  it("qemu's layout (each directory followed by its tables) is one run per directory", () => {
    const n = 1 << 16;
    const rgd = Uint32Array.from({ length: n }, (_, i) => 100 + i * GT_SEC);
    const gd = Uint32Array.from({ length: n }, (_, i) => 100 + n * GT_SEC + 600 + i * GT_SEC);
    const runs = TableRuns.collect([gd, rgd], GT_SEC, Infinity) as TableRuns;
    expect(runs).toBeInstanceOf(TableRuns);
    expect(runs.runCount).toBe(2);
    expect(runs.tableCount).toBe(2 * n);
    expect(runs.start).toBe(100);
    expect(runs.end).toBe(gd[n - 1] + GT_SEC);
    expect(runs.overlap()).toBeUndefined();
    for (const s of [0, 99, 100, 101, 103, 104, gd[0] - 1, gd[0], gd[n - 1] + 3, gd[n - 1] + 4]) expect(runs.tableAt(s, 1)).toBe(tableAtRef([gd, rgd], s, 1));
  });

  it('answers as the sorted list of every table does, for shuffled and gapped directories', () => {
    const next = rng(7);
    for (let round = 0; round < 40; round++) {
      const n = 1 + Math.floor(next() * 60);
      // Distinct table slots, some consecutive (runs), some entries 0, in a random order.
      const slots = Array.from({ length: 2 * n }, (_, i) => i).sort(() => next() - 0.5);
      const sorted = round % 3 === 0;
      const pick = (k: number) => (next() < 0.15 ? 0 : 10 + (sorted ? k : slots[k]) * GT_SEC);
      const gd = Uint32Array.from({ length: n }, (_, i) => pick(i));
      const rgd = Uint32Array.from({ length: n }, (_, i) => pick(n + i));
      const runs = TableRuns.collect([gd, rgd], GT_SEC, Infinity) as TableRuns;
      expect(runs.tableCount).toBe([...gd, ...rgd].filter((x) => x !== 0).length);
      expect(runs.overlap()).toBeUndefined();
      for (let s = 0; s < 10 + 2 * n * GT_SEC + 8; s++) for (const len of [1, 3, 8]) expect(runs.tableAt(s, len)).toBe(tableAtRef([gd, rgd], s, len));

      // Which GD entries have a table touching a data range of the file (bytes; 512-byte sectors).
      const starts: number[] = [];
      const ends: number[] = [];
      for (let at = 0; at < (10 + 2 * n * GT_SEC) * 512;) {
        at += Math.floor(next() * 8192);
        const len = 1 + Math.floor(next() * 4096);
        starts.push(at);
        ends.push(at + len);
        at += len;
      }
      const knownUntil = next() < 0.3 ? Math.floor(next() * (10 + 2 * n * GT_SEC) * 512) : Infinity;
      const mark = new Uint8Array(n);
      runs.markData(0, mark, Float64Array.from(starts), Float64Array.from(ends), knownUntil, 512);
      const expected = [...gd].map((s) => {
        if (s === 0) return 0;
        const a = s * 512;
        const b = a + GT_SEC * 512;
        if (b > knownUntil) return 1;
        return starts.some((x, i) => x < b && ends[i] > a) ? 1 : 0;
      });
      expect([...mark]).toEqual(expected);
    }
  });

  it('finds overlapping tables and a table claimed twice', () => {
    const dup = TableRuns.collect([Uint32Array.from([10, 14]), Uint32Array.from([30, 14])], GT_SEC, Infinity) as TableRuns;
    expect(dup.overlap()).toBeDefined();
    const half = TableRuns.collect([Uint32Array.from([10, 14, 18]), Uint32Array.from([20])], GT_SEC, Infinity) as TableRuns;
    const o = half.overlap()!;
    expect(half.run(o.b).start).toBe(20);
    expect(half.run(o.a).start).toBe(10);
  });

  it('names the first entry whose table ends past the file', () => {
    // Tables of 4 sectors at 10, 14, 18, 22: with the file ending at sector 20, the one at 18 does not fit.
    expect(TableRuns.collect([Uint32Array.from([10, 14, 18, 22])], GT_SEC, 20)).toEqual({ dir: 0, index: 2, sector: 18 });
    expect(TableRuns.collect([Uint32Array.from([10, 0]), Uint32Array.from([0, 40])], GT_SEC, 22)).toEqual({ dir: 1, index: 1, sector: 40 });
    expect(TableRuns.collect([Uint32Array.from([10, 14])], GT_SEC, 18)).toBeInstanceOf(TableRuns);
  });
});

describe('a new monolithicSparse disk', () => {
  let dir: string;
  let cleanup: () => void;
  beforeAll(() => ({ dir, cleanup } = tempDir()));
  afterAll(() => cleanup());

  it('is opened from the directories it wrote, not by reading them back', async () => {
    // 1 TiB: each directory is 32,768 entries (128 KiB).
    const path = join(dir, 'new.vmdk');
    const reads: number[] = [];
    // Observed, not replaced: the real readAt runs, the size of each read is recorded.
    const original = HostFile.prototype.readAt;
    HostFile.prototype.readAt = async function (this: HostFile, target: Uint8Array, pos: number) {
      reads.push(target.length);
      return original.call(this, target, pos);
    };
    try {
      const d = await createDisk(path, { capacity: 2 ** 40, subformat: 'monolithicSparse' });
      await d.write(5 * MiB, Buffer.alloc(MiB, 7));
      await d.flush();
      await d.close();
    } finally {
      HostFile.prototype.readAt = original;
    }
    expect(Math.max(0, ...reads)).toBeLessThan(128 * 1024);
    // What was written reads back through a fresh open (which does read the directories).
    const r = await openDisk(path, { readOnly: true });
    try {
      const ranges = [];
      for await (const x of r.allocatedRanges()) ranges.push(x);
      expect(ranges).toEqual([{ offset: 5 * MiB, length: MiB }]);
      const b = Buffer.alloc(MiB);
      await r.readInto(5 * MiB, b);
      expect(b.every((x) => x === 7)).toBe(true);
    } finally {
      await r.close();
    }
  });
});
