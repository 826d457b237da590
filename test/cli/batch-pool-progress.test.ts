// What a batch worker thread (dist/cli/batch-worker.js) reports of an image's progress: its last
// report is the image's bytes, and it comes once, with 'done' — a small image done in milliseconds
// costs the main thread one message, not one per progress event of its job.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BatchItemResult } from '../../src/cli/batch.js';
import { BatchPool } from '../../src/cli/batch-pool.js';
import { BatchQueue } from '../../src/cli/batch-queue.js';
import { makeCtx } from '../../src/cli/context.js';
import type { JobProgressEvent } from '../../src/cli/jobs.js';
import { KeyDesk } from '../../src/cli/key-bridge.js';
import { KeySession } from '../../src/cli/key-session.js';
import { Output } from '../../src/cli/output.js';
import { DEFAULT_CIPHER, DEFAULT_UNIT_SIZE } from '../../src/disk/params.js';

const SCRIPT = new URL('../../dist/cli/batch-worker.js', import.meta.url);
const MiB = 1024 * 1024;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-batch-progress-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('batch worker progress', () => {
  it('reports an image as done once, with its bytes', async () => {
    const ctx = makeCtx({
      output: new Output({ quiet: true }),
      signal: new AbortController().signal,
      env: {},
      io: { input: new PassThrough(), output: new PassThrough() },
    });
    const desk = new KeyDesk(new KeySession(ctx, { home: join(dir, 'home') }), async () => []);
    const input = join(dir, 'one.img');
    await writeFile(input, Buffer.alloc(MiB, 7));
    await mkdir(join(dir, 'out'));
    const items = [{ input, output: join(dir, 'out', 'one.vmdk') }];
    const queue = new BatchQueue(1, 1);
    const pool = new BatchPool(
      SCRIPT,
      [1],
      { opts: { cipher: DEFAULT_CIPHER, unitSize: DEFAULT_UNIT_SIZE, subformat: 'monolithicSparse' }, passphraseGiven: false },
      desk,
      items,
      queue,
    );
    try {
      const reports: JobProgressEvent[] = [];
      let dones = 0;
      pool.progress = () => ({ onProgress: (p: JobProgressEvent) => void reports.push(p), done: () => void dones++ });
      const run = new Promise<BatchItemResult | undefined>((resolve) => pool.start(queue, (_i, r) => resolve(r)));
      expect(await run).toMatchObject({ ok: true, bytes: MiB });
      expect(dones).toBe(1);
      // The job reports the finished chunk and then its end (two events of MiB/MiB): one message says both.
      expect(reports.filter((p) => p.bytesDone >= p.bytesTotal)).toEqual([{ bytesDone: MiB, bytesTotal: MiB }]);
      expect(reports.at(-1)).toEqual({ bytesDone: MiB, bytesTotal: MiB });
    } finally {
      await pool.close();
    }
  });
});
