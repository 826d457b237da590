import { describe, expect, it } from 'vitest';
import { WorkQueue } from '../../src/util/work-queue.js';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('WorkQueue', () => {
  it('hands items out in the order pushed, to workers that took before and after the push', async () => {
    const q = new WorkQueue<number>();
    const early = [q.take(), q.take()]; // waiting before anything is pushed
    q.push(1);
    q.push(2);
    q.push(3);
    q.push(4);
    expect(await Promise.all(early)).toEqual([1, 2]);
    expect(await q.take()).toBe(3);
    expect(await q.take()).toBe(4);
    q.push(5); // after the queue drained once
    expect(await q.take()).toBe(5);
  });

  it('end() wakes every waiting worker with undefined, after the items already pushed are taken', async () => {
    const q = new WorkQueue<string>();
    q.push('a');
    expect(await q.take()).toBe('a');
    const waiting = [q.take(), q.take()];
    let settled = 0;
    for (const w of waiting) void w.then(() => settled++);
    await tick();
    expect(settled).toBe(0); // nothing to take and not ended: they wait
    q.end();
    expect(await Promise.all(waiting)).toEqual([undefined, undefined]);
    q.push('late'); // ignored after end()
    expect(await q.take()).toBeUndefined();

    const r = new WorkQueue<string>();
    r.push('x');
    r.push('y');
    r.end();
    expect([await r.take(), await r.take(), await r.take()]).toEqual(['x', 'y', undefined]);
  });
});
