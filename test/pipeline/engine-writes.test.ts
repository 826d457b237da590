// The engine's writes: one at a time by default, up to writeConcurrency at once when the job allows
// it (the direct path), always started in chunk order, within `depth` chunks of memory, and a failed
// write reported after everything in flight has settled.
import { describe, expect, it } from 'vitest';
import { runChunks } from '../../src/pipeline/engine.js';
import type { Span } from '../../src/pipeline/plan.js';

const CHUNK = 1 << 20;

async function* spans(n: number): AsyncIterable<Span> {
  for (let i = 0; i < n; i++) yield { offset: i * CHUNK, length: CHUNK };
}

/** Writes that take a few event-loop turns, recording their order and how many ran at once. */
function slowWrites(failAt?: number) {
  const log = { started: [] as number[], finished: [] as number[], running: 0, maxRunning: 0, buffers: new Set<ArrayBufferLike>() };
  const write = async (offset: number, data: Buffer): Promise<void> => {
    log.buffers.add(data.buffer);
    log.started.push(offset);
    log.running++;
    log.maxRunning = Math.max(log.maxRunning, log.running);
    try {
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
      if (offset === failAt) throw Object.assign(new Error('disk full'), { code: 'ENOSPC' });
      log.finished.push(offset);
    } finally {
      log.running--;
    }
  };
  return { log, write };
}

const job = (n: number, write: (offset: number, data: Buffer) => Promise<void>, extra: { depth?: number; writeConcurrency?: number }) => ({
  chunks: spans(n),
  chunkSize: CHUNK,
  what: 'test',
  read: async (chunk: Span, buf: Buffer) => void buf.fill(chunk.offset / CHUNK),
  transform: async (chunk: Span, buf: Buffer) => [{ offset: chunk.offset, data: buf }],
  write,
  ...extra,
});

describe('runChunks writes', () => {
  it('writes one chunk at a time by default', async () => {
    const { log, write } = slowWrites();
    await runChunks(job(12, write, { depth: 4 }));
    expect(log.maxRunning).toBe(1);
    expect(log.finished).toEqual(Array.from({ length: 12 }, (_, i) => i * CHUNK));
  });

  it('runs up to writeConcurrency writes at once, started in order, within depth buffers', async () => {
    const { log, write } = slowWrites();
    await runChunks(job(12, write, { depth: 4, writeConcurrency: 2 }));
    expect(log.maxRunning).toBe(2);
    expect(log.started).toEqual(Array.from({ length: 12 }, (_, i) => i * CHUNK));
    expect(log.finished.slice().sort((a, b) => a - b)).toEqual(log.started);
    expect(log.buffers.size).toBeLessThanOrEqual(4);
  });

  it('never runs more writes at once than depth', async () => {
    const { log, write } = slowWrites();
    await runChunks(job(8, write, { depth: 2, writeConcurrency: 8 }));
    expect(log.maxRunning).toBe(2);
  });

  it('reports a failed concurrent write once the other writes have settled', async () => {
    const { log, write } = slowWrites(5 * CHUNK);
    await expect(runChunks(job(12, write, { depth: 4, writeConcurrency: 2 }))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(log.running).toBe(0);
    expect(log.started.length).toBeLessThan(12);
  });
});
