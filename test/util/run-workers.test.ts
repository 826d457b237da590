import { describe, expect, it } from 'vitest';
import { runWorkers } from '../../src/util/run-workers.js';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('runWorkers', () => {
  it('runs the given number of workers over a shared queue until it is empty', async () => {
    const queue = Array.from({ length: 50 }, (_, i) => i);
    const seen: number[] = [];
    let started = 0;
    await runWorkers(4, async (stopped) => {
      started++;
      while (!stopped() && queue.length > 0) {
        seen.push(queue.shift()!);
        await tick();
      }
    });
    expect(started).toBe(4);
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 50 }, (_, i) => i));
  });

  it('stops every worker at the first failure, waits for all, and rethrows that first failure', async () => {
    let running = 0;
    let stepsAfterFailure = 0;
    let failed = false;
    const order: string[] = [];
    const run = runWorkers(3, async (stopped) => {
      const me = running++;
      try {
        for (let step = 0; !stopped(); step++) {
          if (failed) stepsAfterFailure++;
          await tick();
          if (me === 1 && step === 3) {
            failed = true;
            throw new Error('first');
          }
        }
        // A worker that sees the stop and then fails itself: its error is not the one reported.
        if (me === 2) {
          await tick();
          throw new Error('second');
        }
      } finally {
        order.push(`end ${me}`);
      }
    });
    await expect(run).rejects.toThrow('first');
    // Every worker had returned before the call settled.
    expect(order.sort()).toEqual(['end 0', 'end 1', 'end 2']);
    // The other workers stopped at their next step (each at most one step past the failure).
    expect(stepsAfterFailure).toBeLessThanOrEqual(2);
  });

  it('resolves with no workers', async () => {
    await expect(runWorkers(0, () => Promise.reject(new Error('never')))).resolves.toBeUndefined();
  });
});
