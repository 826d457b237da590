// The shared queue of a batch (src/cli/batch-queue.ts): every thread takes its next image itself;
// a stop hands out nothing more and says exactly how many were handed out.
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BatchQueue } from '../../src/cli/batch-queue.js';
import { cleanEnv, json, vmseal } from './run-cli.js';

const MiB = 1024 * 1024;
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-batch-queue-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('BatchQueue', () => {
  it('hands out every index once, in order, across queues over one buffer', () => {
    const main = new BatchQueue(5, 2);
    const worker = new BatchQueue(5, 0, main.buffer);
    const taken = [main.take(), worker.take(0), worker.take(1), main.take(), worker.take(0), main.take(), worker.take(1)];
    expect(taken).toEqual([0, 1, 2, 3, 4, undefined, undefined]);
    // Each lane's cell names the image it took last (a dead worker's image is failed by it).
    expect([main.claimedBy(0), main.claimedBy(1)]).toEqual([4, 2]);
  });

  it('stop says how many were handed out, and nothing is handed out after it', () => {
    const q = new BatchQueue(10, 1);
    q.take();
    q.take();
    expect(q.stop()).toBe(2);
    expect(q.take(0)).toBeUndefined();
    expect(q.claimedBy(0)).toBeUndefined();
    expect(q.stop()).toBe(2);
    const empty = new BatchQueue(3, 0);
    for (let i = 0; i < 5; i++) empty.take();
    expect(empty.stop()).toBe(3);
  });

  it('refuses a batch size it cannot count', () => {
    expect(() => new BatchQueue(-1, 0)).toThrow(RangeError);
    expect(() => new BatchQueue(2 ** 31, 0)).toThrow(RangeError);
  });

  it('threads racing for the images each get distinct ones, all of them', async () => {
    const count = 20_000;
    const q = new BatchQueue(count, 2);
    const code = `
      const { parentPort, workerData } = require('node:worker_threads');
      const cells = new Int32Array(workerData.buffer);
      const got = [];
      for (;;) { const i = Atomics.add(cells, 0, 1); if (i >= workerData.count) break; got.push(i); }
      parentPort.postMessage(got);`;
    const run = (): Promise<number[]> =>
      new Promise((resolve, reject) => {
        const w = new Worker(code, { eval: true, workerData: { buffer: q.buffer, count } });
        w.once('message', resolve);
        w.once('error', reject);
      });
    const mine: number[] = [];
    const others = Promise.all([run(), run()]);
    for (let i = q.take(); i !== undefined; i = q.take()) mine.push(i);
    const all = [...mine, ...(await others).flat()].sort((a, b) => a - b);
    expect(all).toEqual([...Array(count).keys()]);
  });
});

describe('a batch and the staging folders killed jobs left in its output folder', () => {
  it('lists the output folder once and still removes a dead job staging folder of an image', async () => {
    const inDir = join(dir, 'in');
    const outDir = join(dir, 'out');
    await mkdir(inDir);
    await mkdir(outDir);
    for (const n of ['a', 'b', 'c']) await writeFile(join(inDir, `${n}.img`), Buffer.alloc(MiB, n.charCodeAt(0)));
    const stage = join(outDir, '.b.vmdk.vmseal-tmp-999999-deadbeef');
    await mkdir(stage);
    await writeFile(join(stage, 'owner.json'), JSON.stringify({ pid: 999999, host: hostname() }));
    await writeFile(join(stage, 'b.vmdk'), 'half written');
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
    const r = await vmseal(['convert', inDir, outDir, '--subformat', 'monolithicSparse', '--json'], env);
    expect(r.code).toBe(0);
    expect(json(r)).toMatchObject({ converted: 3, failed: 0 });
    expect((await readdir(outDir)).sort()).toEqual(['a.vmdk', 'b.vmdk', 'c.vmdk']);
  });
});
