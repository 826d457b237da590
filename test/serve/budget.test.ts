// The payload budget alone: first come first served, a request larger than the budget waits for an
// empty budget instead of forever, and releases wake waiters in order.
import { describe, expect, it } from 'vitest';
import { PayloadBudget } from '../../src/serve/budget.js';

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
