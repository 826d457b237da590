/**
 * A failed native file call of a copy job (ERR_COPY_RANGE_IO, ERR_FS_EXTENTS_IO, ERR_TRANSFER_IO:
 * `errno` and `syscall`) as the VMDK layer's I/O error, as a failed read or write of the engine
 * would be: the file, what was being done and the errno's name (ENOSPC, EIO…). Anything else is
 * returned as it is.
 */
import { getSystemErrorName } from 'node:util';
import { VmdkFormatError } from '../vmdk/index.js';

export function nativeIoError(err: unknown, action: string, file: string): unknown {
  const errno = (err as { errno?: unknown }).errno;
  if (!(err instanceof Error) || typeof errno !== 'number') return err;
  return new VmdkFormatError('ERR_VMDK_IO', `cannot ${action}: ${getSystemErrorName(-errno)}`, { file, cause: err });
}
