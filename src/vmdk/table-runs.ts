/**
 * The grain tables a sparse extent's directories list, held as runs of tables laid end to end: a run
 * is `count` tables from sector `start` on, one every `gtSec` sectors, named by consecutive entries
 * of one directory from `first` on. qemu-img's layout and create.ts's are one run per directory, so
 * the 1 Mi tables of a 16 TiB disk take two runs, not 4 MiB of sorted sectors, and every question
 * open() asks of them (overlaps, which ones lie in holes of the file, which one a sector falls in)
 * costs per run, not per table. An arbitrary layout degrades to one run per table.
 */

/** Growable parallel columns of the runs (8 + 8 + 4 + 1 bytes per run). */
class Columns {
  start = new Float64Array(16);
  count = new Float64Array(16);
  first = new Uint32Array(16);
  dir = new Uint8Array(16);
  length = 0;
  push(start: number, count: number, first: number, dir: number): void {
    if (this.length === this.start.length) {
      const grow = <T extends Float64Array | Uint32Array | Uint8Array>(a: T, make: (n: number) => T): T => {
        const b = make(a.length * 2);
        b.set(a);
        return b;
      };
      this.start = grow(this.start, (n) => new Float64Array(n));
      this.count = grow(this.count, (n) => new Float64Array(n));
      this.first = grow(this.first, (n) => new Uint32Array(n));
      this.dir = grow(this.dir, (n) => new Uint8Array(n));
    }
    const i = this.length++;
    this.start[i] = start;
    this.count[i] = count;
    this.first[i] = first;
    this.dir[i] = dir;
  }
}

/** An entry that points past the end of the file (the caller names it in its error). */
export interface TableBeyondFile {
  dir: number;
  index: number;
  sector: number;
}

export class TableRuns {
  readonly gtSec: number;
  /** Tables listed, over every directory. */
  readonly tableCount: number;
  readonly #c: Columns;

  private constructor(c: Columns, gtSec: number, tableCount: number) {
    this.#c = c;
    this.gtSec = gtSec;
    this.tableCount = tableCount;
  }

  get runCount(): number {
    return this.#c.length;
  }

  /** Sector just past the last table (0 when there is none). */
  get end(): number {
    const c = this.#c;
    return c.length === 0 ? 0 : c.start[c.length - 1] + c.count[c.length - 1] * this.gtSec;
  }

  /** Sector of the first table (0 when there is none). */
  get start(): number {
    return this.#c.length === 0 ? 0 : this.#c.start[0];
  }

  /**
   * The runs of `dirs` (entry 0 = no table), sorted by start sector, in one pass over each
   * directory. `limitSector` (may be fractional): an entry whose table ends past it is returned
   * instead of runs (the first such of its run; runs are checked in directory order).
   */
  static collect(dirs: readonly Uint32Array[], gtSec: number, limitSector: number): TableRuns | TableBeyondFile {
    const c = new Columns();
    let tables = 0;
    let ordered = true;
    for (let d = 0; d < dirs.length; d++) {
      const dir = dirs[d];
      let runStart = 0;
      let runCount = 0;
      let runFirst = 0;
      const close = (): TableBeyondFile | undefined => {
        if (runCount === 0) return undefined;
        if (runStart + runCount * gtSec > limitSector) {
          // The first table of the run that ends past the limit.
          // Table k ends at runStart + (k + 1)·gtSec: the smallest k past the limit.
          const k = Math.max(0, Math.floor((limitSector - runStart) / gtSec));
          const index = runFirst + Math.min(k, runCount - 1);
          return { dir: d, index, sector: dir[index] };
        }
        if (c.length > 0 && runStart < c.start[c.length - 1]) ordered = false;
        c.push(runStart, runCount, runFirst, d);
        tables += runCount;
        return undefined;
      };
      for (let i = 0; i < dir.length; i++) {
        const s = dir[i];
        if (s !== 0 && runCount > 0 && s === runStart + runCount * gtSec && i === runFirst + runCount) {
          runCount++;
          continue;
        }
        const bad = close();
        if (bad) return bad;
        runCount = s === 0 ? 0 : 1;
        runStart = s;
        runFirst = i;
      }
      const bad = close();
      if (bad) return bad;
    }
    return new TableRuns(ordered ? c : sortRuns(c), gtSec, tables);
  }

  /** The first pair of runs that overlap (sorted order: `b` starts inside `a`), if any. */
  overlap(): { a: number; b: number } | undefined {
    const c = this.#c;
    for (let i = 1; i < c.length; i++) if (c.start[i] < c.start[i - 1] + c.count[i - 1] * this.gtSec) return { a: i - 1, b: i };
    return undefined;
  }

  /** Run `i`: its first table's sector and which directory entry names it. */
  run(i: number): { start: number; count: number; dir: number; first: number } {
    const c = this.#c;
    return { start: c.start[i], count: c.count[i], dir: c.dir[i], first: c.first[i] };
  }

  /** The start of a table overlapping sectors [s, s + len), if any. */
  tableAt(s: number, len: number): number | undefined {
    const c = this.#c;
    // The last run starting before s + len is the only candidate (runs do not overlap each other).
    let lo = 0;
    let hi = c.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (c.start[mid] < s + len) lo = mid + 1;
      else hi = mid;
    }
    if (lo === 0) return undefined;
    const r = lo - 1;
    const k = Math.min(c.count[r] - 1, Math.floor((s + len - 1 - c.start[r]) / this.gtSec));
    const t = c.start[r] + k * this.gtSec;
    return t + this.gtSec > s ? t : undefined;
  }

  /**
   * Set `mark[i]` for every entry i of directory `dir` whose table overlaps a data range of the file
   * (byte ranges sorted and disjoint; from `knownUntil` on everything counts as data). Costs per run
   * and per range, not per table.
   */
  markData(dir: number, mark: Uint8Array, starts: Float64Array, ends: Float64Array, knownUntil: number, sectorBytes: number): void {
    const c = this.#c;
    const tableBytes = this.gtSec * sectorBytes;
    for (let r = 0; r < c.length; r++) {
      if (c.dir[r] !== dir) continue;
      const a = c.start[r] * sectorBytes;
      const b = a + c.count[r] * tableBytes;
      const cover = (from: number, to: number) => {
        const lo = Math.max(from, a);
        const hi = Math.min(to, b);
        if (hi <= lo) return;
        const k0 = Math.floor((lo - a) / tableBytes);
        const k1 = Math.ceil((hi - a) / tableBytes);
        mark.fill(1, c.first[r] + k0, c.first[r] + k1);
      };
      // The first data range that ends after the run starts, then each one starting before it ends.
      let lo = 0;
      let hi = starts.length;
      while (lo < hi) {
        const mid = (lo + hi) >>> 1;
        if (ends[mid] <= a) lo = mid + 1;
        else hi = mid;
      }
      for (let i = lo; i < starts.length && starts[i] < b; i++) cover(starts[i], ends[i]);
      if (knownUntil < b) cover(knownUntil, b);
    }
  }
}

/** The runs sorted by start: one native sort of keys start·2^21 + run (exact: start < 2^32, runs ≤ 2^21). */
function sortRuns(c: Columns): Columns {
  const keys = new Float64Array(c.length);
  for (let i = 0; i < c.length; i++) keys[i] = c.start[i] * 2 ** 21 + i;
  keys.sort();
  const out = new Columns();
  for (let j = 0; j < keys.length; j++) {
    const i = keys[j] % 2 ** 21;
    out.push(c.start[i], c.count[i], c.first[i], c.dir[i]);
  }
  return out;
}
