// The worker threads of a batch (src/cli/batch-pool.ts) running the built worker script
// (dist/cli/batch-worker.js, as the CLI tests use dist): images handed to workers once they are
// ready, and an abort in the middle stops the images in the workers, which remove their staging
// folders and answer "not run" (an AbortError here).
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchItemResult } from '../../src/cli/batch.js';
import { BatchPool } from '../../src/cli/batch-pool.js';
import { BatchQueue } from '../../src/cli/batch-queue.js';
import { makeCtx } from '../../src/cli/context.js';
import { KeyDesk } from '../../src/cli/key-bridge.js';
import { KeySession } from '../../src/cli/key-session.js';
import { Output } from '../../src/cli/output.js';
import { DEFAULT_CIPHER, DEFAULT_UNIT_SIZE } from '../../src/disk/params.js';

const SCRIPT = new URL('../../dist/cli/batch-worker.js', import.meta.url);
const MiB = 1024 * 1024;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-batch-pool-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A quiet CLI context's key session (its own keystore folder), the desk workers ask for keys, and a new output folder. */
async function poolSetup(home: string, outName: string): Promise<{ keys: KeySession; desk: KeyDesk; out: string }> {
  const ctx = makeCtx({
    output: new Output({ quiet: true }),
    signal: new AbortController().signal,
    env: {},
    io: { input: new PassThrough(), output: new PassThrough() },
  });
  const keys = new KeySession(ctx, { home: join(dir, home) });
  const desk = new KeyDesk(keys, async () => []);
  const out = join(dir, outName);
  await mkdir(out);
  return { keys, desk, out };
}

describe('batch worker pool', () => {
  it('workers take images from the shared queue themselves and, on abort, clean up the images in flight', async () => {
    const { keys, desk, out } = await poolSetup('home', 'out');
    // Two small images, then big ones: the workers take them in input order without the main
    // thread handing any out; an abort once two big ones are staged stops them and the rest.
    const names = ['small0', 'small1', 'big0', 'big1', 'big2', 'big3'];
    for (const n of names) await writeFile(join(dir, `${n}.img`), Buffer.alloc(n.startsWith('big') ? 128 * MiB : MiB, 0x5a));
    const items = names.map((n) => ({ input: join(dir, `${n}.img`), output: join(out, `${n}.vmdk`) }));
    // One worker converting two images at once (two lanes of the queue): an abort stops both.
    const queue = new BatchQueue(items.length, 2);
    const pool = new BatchPool(
      SCRIPT,
      [2],
      { opts: { cipher: DEFAULT_CIPHER, unitSize: DEFAULT_UNIT_SIZE, subformat: 'monolithicSparse' }, passphraseGiven: false },
      desk,
      items,
      queue,
    );
    const ended = new Map<number, BatchItemResult | undefined>();
    let handed: number | undefined;
    let wake = (): void => undefined;
    try {
      pool.start(queue, (index, result) => {
        ended.set(index, result);
        wake();
      });
      const staging = async (): Promise<string[]> => (await readdir(out)).filter((n) => n.includes('.vmseal-tmp-'));
      const guard = Date.now() + 30_000;
      while ((await staging()).filter((n) => n.startsWith('.big')).length < 2 && Date.now() < guard) await new Promise((r) => setTimeout(r, 2));
      handed = queue.stop();
      pool.abort();
      while ([...Array(handed).keys()].some((i) => !ended.has(i)) && Date.now() < guard) await new Promise<void>((r) => (wake = r));
      // Nothing was taken after the stop, every image handed out ended, and the small ones converted.
      expect(handed).toBeLessThan(items.length);
      expect([...ended.keys()].sort()).toEqual([...Array(handed).keys()]);
      expect(ended.get(0)).toMatchObject({ ok: true, bytes: MiB });
      expect(ended.get(1)).toMatchObject({ ok: true, bytes: MiB });
      const notRun = [...ended].filter(([, r]) => r === undefined).map(([i]) => i);
      expect(notRun.length).toBeGreaterThanOrEqual(1);
      expect(await staging()).toEqual([]);
      const left = (await readdir(out)).filter((n) => !n.startsWith('.')).sort();
      expect(left).toEqual([...ended].flatMap(([i, r]) => (r?.ok ? [`${names[i]}.vmdk`] : [])).sort());
    } finally {
      await pool.close();
      await keys.close();
    }
  }, 60_000);

  it('fails every image a worker thread had in flight when the thread dies', async () => {
    const { keys, desk, out } = await poolSetup('home-dies', 'out-dies');
    const names = ['slow0', 'slow1', 'slow2'];
    for (const n of names) await writeFile(join(dir, `${n}.img`), Buffer.alloc(128 * MiB, 0x3c));
    const items = names.map((n) => ({ input: join(dir, `${n}.img`), output: join(out, `${n}.vmdk`) }));
    const queue = new BatchQueue(items.length, 2);
    const pool = new BatchPool(
      SCRIPT,
      [2],
      { opts: { cipher: DEFAULT_CIPHER, unitSize: DEFAULT_UNIT_SIZE, subformat: 'monolithicSparse' }, passphraseGiven: false },
      desk,
      items,
      queue,
    );
    const ended = new Map<number, BatchItemResult | undefined>();
    let wake = (): void => undefined;
    try {
      pool.start(queue, (index, result) => {
        ended.set(index, result);
        wake();
      });
      const staging = async (): Promise<string[]> => (await readdir(out)).filter((n) => n.includes('.vmseal-tmp-'));
      const guard = Date.now() + 30_000;
      while ((await staging()).length < 2 && Date.now() < guard) await new Promise((r) => setTimeout(r, 2));
      // The worker's two lanes each hold an image: the thread goes away under both.
      queue.stop();
      const thread = (pool as unknown as { threads: Array<{ worker: { terminate(): Promise<number> } }> }).threads[0]!;
      await thread.worker.terminate();
      while ((!ended.has(0) || !ended.has(1)) && Date.now() < guard) {
        await new Promise<void>((r) => {
          wake = r;
          setTimeout(r, 50);
        });
      }
      for (const i of [0, 1]) {
        expect(ended.get(i)).toMatchObject({ ok: false, error: { code: 'ERR_UNEXPECTED', exitCode: 70 } });
        expect(ended.get(i)?.error?.reason).toMatch(/internal error: the batch worker thread stopped/);
      }
      expect(ended.has(2)).toBe(false);
    } finally {
      await pool.close();
      await keys.close();
    }
  }, 60_000);
});
