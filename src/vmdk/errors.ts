import { VmsealError, type ArgumentErrorCode } from '../errors.js';

/**
 * Stable codes of the VMDK layer. Every bad file, bad argument or refused operation of src/vmdk throws a
 * VmdkFormatError with one of these; callers branch on `code`, never on the message.
 */
export type VmdkErrorCode =
  | 'ERR_VMDK_FORMAT' // a structure is malformed: wrong magic, bad header field, bad descriptor line
  | 'ERR_VMDK_TRUNCATED' // a file ends before a structure or grain it must hold
  | 'ERR_VMDK_CORRUPT' // tables point past the end of a file, into metadata, twice at one grain; bad zlib
  | 'ERR_VMDK_LIMIT' // a size beyond a documented bound (descriptor, grain directory, grain size, …)
  | 'ERR_VMDK_ENCODING' // descriptor is not UTF-8 (declared or actual)
  | 'ERR_VMDK_UNSUPPORTED' // a subformat or extent type vmseal does not handle (vmfsSparse, seSparse, …)
  | 'ERR_VMDK_EXTENT_FILE' // an extent file is missing, or its name is absolute or leaves the disk's folder
  | 'ERR_VMDK_READ_ONLY' // a write to a disk or extent that cannot be written
  | 'ERR_VMDK_RANGE' // a read or write outside the disk's capacity
  | 'ERR_VMDK_DESCRIPTOR_FULL' // an edited embedded descriptor no longer fits in its reserved area
  | 'ERR_VMDK_WRITE_ORDER' // a streamOptimized disk being written was written out of order
  | 'ERR_VMDK_EXISTS' // createDisk would overwrite a file
  | 'ERR_VMDK_CLOSED' // the disk was closed
  | 'ERR_VMDK_IO' // the operating system refused an I/O
  | 'ERR_VMDK_CHAIN' // a snapshot chain cannot be assembled: parent missing, loop, too deep, half a parent link, layers disagree
  | 'ERR_VMDK_PARENT_CHANGED' // a snapshot parent's CID is not the child's parentCID: the parent was written after the child was made
  | 'ERR_DISK_ENCRYPTED' // an encrypted disk opened without allowEncrypted
  | 'ERR_INTERRUPTED_JOB' // a plain disk, or a chain's parent, carries the job line of an unfinished job (snapshot commit): finish it with resume
  | ArgumentErrorCode; // ERR_INVALID_ARGUMENT: a bad argument to an API call

export interface VmdkErrorLocation {
  /** The file the problem is in (absolute path). */
  file?: string;
  /** Byte offset inside `file` of the bad structure. */
  offset?: number;
  /** 1-based line number inside a descriptor. */
  line?: number;
  cause?: unknown;
}

/** The one error class of the VMDK layer; `file`, `offset` and `line` locate the problem when known. */
export class VmdkFormatError extends VmsealError {
  readonly file: string | undefined;
  readonly offset: number | undefined;
  readonly line: number | undefined;

  constructor(code: VmdkErrorCode, message: string, location: VmdkErrorLocation = {}) {
    const where: string[] = [];
    if (location.file !== undefined) where.push(location.file);
    if (location.line !== undefined) where.push(`line ${location.line}`);
    if (location.offset !== undefined) where.push(`offset ${location.offset}`);
    super(code, where.length ? `${message} (${where.join(', ')})` : message, location.cause === undefined ? undefined : { cause: location.cause });
    this.file = location.file;
    this.offset = location.offset;
    this.line = location.line;
  }
}

/** Wrap an operating-system error (ENOENT, EACCES, …) of a file operation into a VmdkFormatError. */
export function ioError(err: unknown, action: string, file: string): VmdkFormatError {
  if (err instanceof VmdkFormatError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return new VmdkFormatError('ERR_VMDK_IO', `cannot ${action}: ${code ?? String(err)}`, { file, cause: err });
}

/**
 * The line an unfinished job leaves in the descriptor of the disk it rewrites (src/disk's
 * `encryption.job`; a snapshot commit puts it in the parent's descriptor, plain or encrypted).
 */
export const JOB_LINE = 'encryption.job';

/** The unfinished job a descriptor names, if any. */
export function jobOf(d: { get(key: string): string | undefined } | undefined): string | undefined {
  return d?.get(JOB_LINE);
}

/** A disk half rewritten by a job that did not finish: refused until `vmseal resume` completes it. */
export function interruptedJob(job: string, file: string): VmdkFormatError {
  return new VmdkFormatError(
    'ERR_INTERRUPTED_JOB',
    `the disk is in the middle of an interrupted ${job.slice(0, 40)} job; finish it first (vmseal resume on the disk, or on the top of its chain for a snapshot commit)`,
    { file },
  );
}
