/**
 * The streaming engine: chunks flow read → transform (decrypt / encrypt on the native thread pool)
 * → write, with at most `depth` chunks in flight (read, transformed or being written). Reads and
 * transforms of later chunks overlap the write of the current one; writes start in chunk order, and
 * with the default `writeConcurrency` of 1 each waits for the one before. Memory is depth × chunkSize
 * whatever the image size: chunk buffers are recycled.
 */
import { giveChunkBuffers, takeChunkBuffer } from './chunk-buffers.js';
import { throwIfAborted } from './errors.js';
import type { Span } from './plan.js';

export interface Piece {
  offset: number;
  data: Buffer;
}

export interface ChunkJob {
  chunks: AsyncIterable<Span>;
  /** Largest chunk length (buffer size). */
  chunkSize: number;
  /** Chunks in flight (default 4). */
  depth?: number;
  /**
   * Chunks whose writes may run at once (default 1: strictly one after the other; at most `depth`).
   * Only for writes that do not depend on each other's order — positional writes into flat files
   * (the direct writer): the device then gets the next write while the event loop comes back from
   * the last one. The VMDK layer's sparse writes allocate grains in order and keep 1.
   */
  writeConcurrency?: number;
  signal?: AbortSignal;
  /** What is running, for the cancellation message. */
  what: string;
  /** Fill `buf` (exactly the chunk's length) with the chunk's source bytes. */
  read(chunk: Span, buf: Buffer): Promise<void>;
  /** Turn the chunk into the pieces to write (subarrays of `buf`, in order; may be empty). */
  transform(chunk: Span, buf: Buffer): Promise<Piece[]>;
  write(offset: number, data: Buffer): Promise<void>;
  /** Called after a chunk's pieces are written. */
  done?(chunk: Span): void | Promise<void>;
}

interface InFlight {
  chunk: Span;
  buffer: Buffer;
  result: Promise<Piece[]>;
}

export async function runChunks(job: ChunkJob): Promise<void> {
  const depth = Math.max(1, job.depth ?? 4);
  const writeConcurrency = Math.min(depth, Math.max(1, job.writeConcurrency ?? 1));
  const pool: Buffer[] = [];
  const inflight: InFlight[] = [];
  /** Writes running; a failed one stays here until a wait on the set reports it. */
  const writing = new Set<Promise<void>>();

  /** Start writing the oldest transformed chunk (after its transform is done). */
  const startWrite = async (): Promise<void> => {
    const item = inflight.shift()!;
    const pieces = await item.result;
    throwIfAborted(job.signal, job.what);
    const w = (async () => {
      for (const piece of pieces) await job.write(piece.offset, piece.data);
      await job.done?.(item.chunk);
      pool.push(item.buffer);
    })();
    writing.add(w);
    w.then(
      () => writing.delete(w),
      () => undefined, // kept in `writing`: the next wait on it rethrows
    );
  };

  /** Free one slot of `depth`: hand a chunk to the writes if they have room, else wait for one write. */
  const makeRoom = async (): Promise<void> => {
    if (inflight.length > 0 && writing.size < writeConcurrency) await startWrite();
    else await Promise.race(writing);
  };

  try {
    for await (const chunk of job.chunks) {
      throwIfAborted(job.signal, job.what);
      while (inflight.length + writing.size >= depth) await makeRoom();
      // Native-owned: the async cipher works on it in place (no copy in and out of native memory).
      const buffer = pool.pop() ?? takeChunkBuffer(job.chunkSize);
      const view = buffer.subarray(0, chunk.length);
      const result = (async () => {
        await job.read(chunk, view);
        return job.transform(chunk, view);
      })();
      result.catch(() => undefined); // observed by startWrite; avoid an unhandled rejection meanwhile
      inflight.push({ chunk, buffer, result });
    }
    while (inflight.length + writing.size > 0) await makeRoom();
    // Every buffer is back in the pool and idle: the next job of the process may reuse them.
    giveChunkBuffers(pool);
  } catch (err) {
    // Let the chunks still in flight settle before the caller closes files under them.
    await Promise.allSettled([...inflight.map((i) => i.result), ...writing]);
    throw err;
  }
}
