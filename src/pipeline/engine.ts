/**
 * The streaming engine: chunks flow read → transform (decrypt / encrypt on the native thread pool)
 * → write, with at most `depth` chunks in flight. Reads and transforms of later chunks overlap the
 * write of the current one; writes happen strictly in order. Memory is depth × chunkSize whatever
 * the image size: chunk buffers are recycled.
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
  const pool: Buffer[] = [];
  const inflight: InFlight[] = [];

  const drainOne = async (): Promise<void> => {
    const item = inflight.shift()!;
    const pieces = await item.result;
    throwIfAborted(job.signal, job.what);
    for (const piece of pieces) await job.write(piece.offset, piece.data);
    await job.done?.(item.chunk);
    pool.push(item.buffer);
  };

  try {
    for await (const chunk of job.chunks) {
      throwIfAborted(job.signal, job.what);
      // Native-owned: the async cipher works on it in place (no copy in and out of native memory).
      const buffer = pool.pop() ?? takeChunkBuffer(job.chunkSize);
      const view = buffer.subarray(0, chunk.length);
      const result = (async () => {
        await job.read(chunk, view);
        return job.transform(chunk, view);
      })();
      result.catch(() => undefined); // observed by drainOne; avoid an unhandled rejection meanwhile
      inflight.push({ chunk, buffer, result });
      if (inflight.length >= depth) await drainOne();
    }
    while (inflight.length) await drainOne();
    // Every buffer is back in the pool and idle: the next job of the process may reuse them.
    giveChunkBuffers(pool);
  } catch (err) {
    // Let the chunks still in flight settle before the caller closes files under them.
    await Promise.allSettled(inflight.map((i) => i.result));
    throw err;
  }
}
