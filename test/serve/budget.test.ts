// The payload budget alone: first come first served, a request larger than the budget waits for an
// empty budget instead of forever, and releases wake waiters in order. The range lock that orders
// overlapping writes, and the pool of large payload buffers.
import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { PayloadBudget } from '../../src/serve/budget.js';
import { BufferPool } from '../../src/serve/buffers.js';
import { RangeLock } from '../../src/serve/range-lock.js';
import { XtsCipher } from '../../src/xts/index.js';

const MiB = 1024 * 1024;

describe('PayloadBudget', () => {
  it('grants in order, and a large request is not starved by small ones', async () => {
    const b = new PayloadBudget(100);
    await b.acquire(60);
    const order: string[] = [];
    const big = b.acquire(80).then(() => order.push('big'));
    const small = b.acquire(10).then(() => order.push('small')); // would fit now, but big came first
    await Promise.resolve();
    expect(order).toEqual([]);
    b.release(60);
    await Promise.all([big, small]);
    expect(order).toEqual(['big', 'small']);
    expect(b.used).toBe(90);
  });

  it('tryAcquire takes what fits at once, never ahead of a waiter', async () => {
    const b = new PayloadBudget(100);
    expect(b.tryAcquire(70)).toBe(true);
    expect(b.tryAcquire(40)).toBe(false);
    const waiting = b.acquire(40);
    expect(b.tryAcquire(10)).toBe(false); // would fit, but 40 came first
    b.release(70);
    await waiting;
    expect(b.tryAcquire(10)).toBe(true);
    expect(b.used).toBe(50);
  });

  it('lets a request larger than the whole budget run alone', async () => {
    const b = new PayloadBudget(64);
    await b.acquire(10);
    let granted = false;
    const huge = b.acquire(1000).then(() => (granted = true));
    await Promise.resolve();
    expect(granted).toBe(false);
    b.release(10);
    await huge;
    expect(b.used).toBe(1000);
    b.release(1000);
    expect(b.used).toBe(0);
  });
});

describe('RangeLock', () => {
  it('runs disjoint ranges at once and overlapping ones in the order they asked', async () => {
    const lock = new RangeLock();
    const order: string[] = [];
    const a = await lock.lock(0, 8);
    const b = await lock.lock(8, 16); // disjoint from a: granted at once
    const c = lock.lock(4, 12).then((release) => (order.push('c'), release)); // overlaps a and b
    const d = lock.lock(10, 11).then((release) => (order.push('d'), release)); // overlaps b and c (asked after c)
    const e = lock.lock(100, 101).then((release) => (order.push('e'), release)); // disjoint from all
    (await e)();
    expect(order).toEqual(['e']);
    b();
    await Promise.resolve();
    expect(order).toEqual(['e']); // c still waits for a, and d for c
    a();
    (await c)();
    (await d)();
    expect(order).toEqual(['e', 'c', 'd']);
    expect(lock.size).toBe(0);
  });
});

describe('BufferPool', () => {
  it('reuses large buffers and keeps at most `keep` bytes idle', () => {
    const pool = new BufferPool(3 * MiB);
    const small = pool.take(4096);
    expect(small.length).toBe(4096);
    pool.give(small); // small buffers are not pooled
    expect(pool.idle).toBe(0);
    const a = pool.take(2 * MiB);
    const b = pool.take(2 * MiB - 512); // same 2 MiB class
    pool.give(a);
    expect(pool.idle).toBe(2 * MiB);
    const again = pool.take(2 * MiB - 512);
    expect(again.buffer).toBe(a.buffer);
    expect(again.length).toBe(2 * MiB - 512);
    pool.give(again);
    pool.give(b); // 4 MiB would be idle: one goes
    expect(pool.idle).toBe(2 * MiB);
    const c = pool.take(MiB); // another class: a new buffer, which fits beside the idle one
    expect(pool.idle).toBe(2 * MiB);
    pool.give(c);
    expect(pool.idle).toBe(3 * MiB);
    pool.give(pool.take(8 * MiB)); // larger than `keep`: never kept
    expect(pool.idle).toBeLessThanOrEqual(3 * MiB);
  });

  it("hands out the XTS addon's own memory, which the cipher's thread pool works on in place", async () => {
    const pool = new BufferPool(4 * MiB);
    const buf = pool.take(MiB + 512);
    // allocateCipherBuffer's memory cannot be transferred (Node 20 copies it, newer Node throws):
    // the mark of a buffer the async cipher does not copy into a block of its own and back.
    try {
      const ab = buf.buffer as ArrayBuffer;
      structuredClone(ab, { transfer: [ab] });
    } catch (err) {
      expect((err as Error).name).toBe('DataCloneError');
    }
    expect(buf.buffer.byteLength).toBe(2 * MiB);
    // And it round-trips through the cipher in place, also once reused from the free list.
    const cipher = new XtsCipher(randomBytes(64));
    try {
      const plain = randomBytes(buf.length);
      plain.copy(buf);
      await cipher.encryptAsync(buf, { unitSize: 512, firstUnit: 7, out: buf });
      pool.give(buf);
      const again = pool.take(MiB + 512);
      expect(again.buffer).toBe(buf.buffer);
      await cipher.decryptAsync(again, { unitSize: 512, firstUnit: 7, out: again });
      expect(again.equals(plain)).toBe(true);
    } finally {
      cipher.dispose();
    }
  });
});
