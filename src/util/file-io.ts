import type { FileHandle } from 'node:fs/promises';

/**
 * Positional writes and reads that are complete or fail. `FileHandle.write` may write fewer bytes than
 * asked (a file-size limit — `ulimit -f`, RLIMIT_FSIZE — or a file system filling up returns a short
 * count before the next call fails with EFBIG/ENOSPC); a caller that ignores the count records as
 * durable a state whose bytes never reached the file. Every write whose result a later step depends
 * on goes through here.
 */
export async function writeFully(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.byteLength) {
    const { bytesWritten } = await fh.write(data, done, data.byteLength - done, position + done);
    if (bytesWritten <= 0) throw noProgressError(data.byteLength - done, position + done);
    done += bytesWritten;
  }
}

/** A write that returned a zero count with no error would loop forever: the file system refusing more, as EIO. */
export function noProgressError(length: number, position: number): NodeJS.ErrnoException {
  const err = new Error(`write of ${length} bytes at offset ${position} made no progress`) as NodeJS.ErrnoException;
  err.code = 'EIO';
  return err;
}

/** Read exactly `length` bytes at `position`; returns how many were there (fewer only at end of file). */
export async function readFully(fh: FileHandle, target: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < target.byteLength) {
    const { bytesRead } = await fh.read(target, done, target.byteLength - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}
