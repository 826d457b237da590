// How a batch spreads its --jobs over threads (planLanes, src/cli/batch-lanes.ts): up to two images at
// once on the main thread's event loop, more in worker threads of up to two each, and no worker
// for a batch one loop carries or one with no more images than jobs; and the default --jobs
// (defaultJobs): two images per core, at most MAX_DEFAULT_JOBS.
import { describe, expect, it } from 'vitest';
import { MAX_DEFAULT_JOBS } from '../../src/cli/batch-limits.js';
import { defaultJobs, IMAGES_PER_THREAD, planLanes } from '../../src/cli/batch-lanes.js';

describe('defaultJobs', () => {
  it('is two images per core, at most MAX_DEFAULT_JOBS', () => {
    expect(MAX_DEFAULT_JOBS).toBe(4);
    expect(defaultJobs(1)).toBe(2);
    expect(defaultJobs(2)).toBe(4);
    expect(defaultJobs(3)).toBe(4);
    expect(defaultJobs(64)).toBe(4);
    // A machine that reports no core count still converts.
    expect(defaultJobs(0)).toBe(2);
  });

  it('gives a batch one thread per core on a 2-core machine: the main thread and one worker, two images each', () => {
    expect(planLanes(defaultJobs(2), 200, true)).toEqual({ here: 2, workers: [2] });
    // One core: both images on the main thread's loop, no worker.
    expect(planLanes(defaultJobs(1), 200, true)).toEqual({ here: 2, workers: [] });
  });
});

describe('planLanes', () => {
  it('keeps up to IMAGES_PER_THREAD images on the main thread, without a worker', () => {
    expect(IMAGES_PER_THREAD).toBe(2);
    expect(planLanes(1, 200, true)).toEqual({ here: 1, workers: [] });
    expect(planLanes(2, 200, true)).toEqual({ here: 2, workers: [] });
  });

  it('spreads more jobs evenly over as few threads as carry them, the main thread first', () => {
    expect(planLanes(3, 200, true)).toEqual({ here: 2, workers: [1] });
    expect(planLanes(4, 200, true)).toEqual({ here: 2, workers: [2] });
    expect(planLanes(5, 200, true)).toEqual({ here: 2, workers: [2, 1] });
    expect(planLanes(8, 200, true)).toEqual({ here: 2, workers: [2, 2, 2] });
    expect(planLanes(64, 200, true)).toEqual({ here: 2, workers: Array.from({ length: 31 }, () => 2) });
    // Every job is a lane of some thread.
    for (let jobs = 1; jobs <= 64; jobs++) {
      const p = planLanes(jobs, 1000, true);
      expect(p.here + p.workers.reduce((a, b) => a + b, 0)).toBe(jobs);
      expect(Math.max(p.here, ...p.workers)).toBeLessThanOrEqual(IMAGES_PER_THREAD);
    }
  });

  it('starts no worker without the worker script, or for a batch with no more images than jobs', () => {
    expect(planLanes(8, 200, false)).toEqual({ here: 8, workers: [] });
    expect(planLanes(8, 8, true)).toEqual({ here: 8, workers: [] });
    expect(planLanes(8, 3, true)).toEqual({ here: 3, workers: [] });
    expect(planLanes(4, 0, true)).toEqual({ here: 1, workers: [] });
  });
});
