// The worker threads of a batch (src/cli/batch-pool.ts) running the built worker script
// (dist/cli/batch-worker.js, as the CLI tests use dist): images handed to workers once they are
// ready, and an abort in the middle stops the images in the workers, which remove their staging
// folders and answer "not run" (an AbortError here).
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BatchPool } from '../../src/cli/batch-pool.js';
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

const noHooks = { onProgress: () => undefined, done: () => undefined };

describe('batch worker pool', () => {
  it('runs images in ready workers and, on abort, cleans up the images in flight', async () => {
    const ctx = makeCtx({
      output: new Output({ quiet: true }),
      signal: new AbortController().signal,
      env: {},
      io: { input: new PassThrough(), output: new PassThrough() },
    });
    const keys = new KeySession(ctx, { home: join(dir, 'home') });
    const desk = new KeyDesk(keys, async () => []);
    const pool = new BatchPool(
      SCRIPT,
      2,
      { opts: { cipher: DEFAULT_CIPHER, unitSize: DEFAULT_UNIT_SIZE, subformat: 'monolithicSparse' }, passphraseGiven: false },
      desk,
    );
    const out = join(dir, 'out');
    await mkdir(out);
    try {
      // No worker is ready at once: the caller would convert the image itself.
      expect(pool.tryRun({ input: 'x', output: 'y' }, noHooks, undefined)).toBeUndefined();
      const small = join(dir, 'small.img');
      await writeFile(small, Buffer.alloc(MiB, 3));
      let first: Promise<{ bytes: number }> | undefined;
      const guard = Date.now() + 20_000;
      while (first === undefined && Date.now() < guard) {
        first = pool.tryRun({ input: small, output: join(out, 'small.vmdk') }, noHooks, undefined);
        if (first === undefined) await new Promise((r) => setTimeout(r, 10));
      }
      expect(first).toBeDefined();
      expect(await first).toEqual({ bytes: MiB });

      // Two big images in the two workers; abort once both have staging folders.
      const bigs = ['big0', 'big1'];
      for (const b of bigs) await writeFile(join(dir, `${b}.img`), Buffer.alloc(128 * MiB, 0x5a));
      const ac = new AbortController();
      await new Promise((r) => setTimeout(r, 50)); // let the first worker go back to idle
      const runs = bigs.map((b) => pool.tryRun({ input: join(dir, `${b}.img`), output: join(out, `${b}.vmdk`) }, noHooks, ac.signal));
      expect(runs.every((r) => r !== undefined)).toBe(true);
      const settled = Promise.allSettled(runs as Array<Promise<unknown>>);
      const staging = async (): Promise<string[]> => (await readdir(out)).filter((n) => n.includes('.vmseal-tmp-'));
      while ((await staging()).length < 2 && Date.now() < guard) await new Promise((r) => setTimeout(r, 2));
      ac.abort();
      const results = await settled;
      // An image that finished before the abort reached its worker is complete; the others are not run.
      const aborted = results.filter((r) => r.status === 'rejected');
      expect(aborted.length).toBeGreaterThanOrEqual(1);
      for (const r of aborted) expect((r as PromiseRejectedResult).reason).toMatchObject({ name: 'AbortError' });
      expect(await staging()).toEqual([]);
      const left = (await readdir(out)).filter((n) => !n.startsWith('.')).sort();
      expect(left).toEqual(['small.vmdk', ...results.flatMap((r, i) => (r.status === 'fulfilled' ? [`${bigs[i]}.vmdk`] : []))].sort());
    } finally {
      await pool.close();
      await keys.close();
    }
  }, 60_000);
});
