/**
 * Which bytes a job processes, as an ordered stream of chunks.
 *
 * Source ranges (data-backed ranges of the input, in order) are rounded out to `align` (the output
 * grain for sparse outputs, the data unit otherwise), merged where they touch, clipped to the
 * capacity, and cut at multiples of `chunkSize` (itself a multiple of `align`), so every chunk
 * starts and ends on a grain and unit boundary (except at the capacity).
 */
import { Yielder } from '../util/yield.js';

export interface Span {
  offset: number;
  length: number;
}

export async function* alignedRanges(source: AsyncIterable<Span> | Iterable<Span>, align: number, capacity: number): AsyncGenerator<Span> {
  let curStart = -1;
  let curEnd = -1;
  for await (const r of source) {
    if (r.length <= 0) continue;
    const s = Math.floor(r.offset / align) * align;
    const e = Math.min(capacity, Math.ceil((r.offset + r.length) / align) * align);
    if (curEnd >= 0 && s <= curEnd) {
      curEnd = Math.max(curEnd, e);
      continue;
    }
    if (curEnd >= 0) yield { offset: curStart, length: curEnd - curStart };
    curStart = s;
    curEnd = e;
  }
  if (curEnd > curStart) yield { offset: curStart, length: curEnd - curStart };
}

/**
 * The ranges of two ordered streams as one ordered stream (overlaps are left for alignedRanges to
 * merge): what two disks compared side by side must read. Each stream is pulled only as far as needed.
 */
export async function* unionRanges(a: AsyncIterable<Span>, b: AsyncIterable<Span>): AsyncGenerator<Span> {
  const ia = a[Symbol.asyncIterator]();
  const ib = b[Symbol.asyncIterator]();
  try {
    let [ra, rb] = await Promise.all([ia.next(), ib.next()]);
    while (!ra.done || !rb.done) {
      if (rb.done || (!ra.done && ra.value.offset <= rb.value.offset)) {
        yield ra.value as Span;
        ra = await ia.next();
      } else {
        yield rb.value;
        rb = await ib.next();
      }
    }
  } finally {
    await Promise.all([ia.return?.(), ib.return?.()]);
  }
}

export async function* chunked(ranges: AsyncIterable<Span>, chunkSize: number): AsyncGenerator<Span> {
  for await (const r of ranges) {
    let off = r.offset;
    const end = r.offset + r.length;
    while (off < end) {
      const next = Math.min(end, (Math.floor(off / chunkSize) + 1) * chunkSize);
      yield { offset: off, length: next - off };
      off = next;
    }
  }
}

export async function totalLength(ranges: AsyncIterable<Span>): Promise<number> {
  let total = 0;
  const yielder = new Yielder();
  for await (const r of ranges) {
    total += r.length;
    await yielder.turn(); // a walk of many tables: let signals in
  }
  return total;
}

/** Least common multiple of two powers of two (or any positive integers). */
export function lcm(a: number, b: number): number {
  const gcd = (x: number, y: number): number => (y === 0 ? x : gcd(y, x % y));
  return (a / gcd(a, b)) * b;
}

/**
 * Runs of `buf` (a chunk at virtual `offset`) that are not all zero, at `granularity` (aligned to
 * absolute multiples of it). Sparse outputs skip the all-zero grains: they read as zeros anyway.
 */
export function nonZeroRuns(buf: Buffer, offset: number, granularity: number): Span[] {
  const runs: Span[] = [];
  let runStart = -1;
  let pos = 0;
  while (pos < buf.length) {
    const next = Math.min(buf.length, (Math.floor((offset + pos) / granularity) + 1) * granularity - offset);
    const zero = isZero(buf, pos, next);
    if (!zero && runStart < 0) runStart = pos;
    if (zero && runStart >= 0) {
      runs.push({ offset: offset + runStart, length: pos - runStart });
      runStart = -1;
    }
    pos = next;
  }
  if (runStart >= 0) runs.push({ offset: offset + runStart, length: buf.length - runStart });
  return runs;
}

const ZEROS = Buffer.alloc(1 << 16);

export function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let p = start; p < end; p += ZEROS.length) {
    const n = Math.min(ZEROS.length, end - p);
    if (buf.compare(ZEROS, 0, n, p, p + n) !== 0) return false;
  }
  return true;
}
