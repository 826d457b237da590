/** Options shared by every job, and their checks. */
import { expected, expectedOneOf } from '../errors.js';
import { type KeyCache, type LockerSpec, type UnlockOptions, MAX_UNIT_SIZE, type CipherName, type DataUnitSize } from '../disk/for-pipeline.js';
import type { CreateDiskOptions, CreateSubformat } from '../vmdk/index.js';
import { DEFAULT_CHUNK, MAX_CHUNK } from './chunk-limits.js';
import { PipelineError } from './errors.js';
import type { ProgressListener } from './progress.js';
import type { KeyRotation } from './retire.js';

export type OutputSubformat = CreateSubformat;

export interface JobOptions {
  /** Cancel the job: it stops with ERR_ABORTED and leaves nothing behind (temporary files removed). */
  signal?: AbortSignal;
  /** Progress events, at most ~10 per second plus one at the end of each phase. */
  onProgress?: ProgressListener;
  /** Replace an existing output (default: false → ERR_OUTPUT_EXISTS). */
  force?: boolean;
  /** Bytes read, transformed and written per step (default: 4 MiB; rounded up to the grain/unit alignment). */
  chunkSize?: number;
  /** Chunks in flight between the stages (default: 4). Memory ≈ depth × chunkSize. */
  depth?: number;
  /** Native XTS threads per call (default: the pool size). */
  threads?: number;
  /**
   * Resume an in-place job from a version-1 journal (checksummed, not authenticated) even though the
   * disk's descriptor is not one the journal would write. Only for a journal you know vmseal left.
   */
  trustV1Journal?: boolean;
  /**
   * What the input file is: 'vmdk' or 'raw'. Default: detected (`.raw`/`.img` are raw; otherwise a
   * sparse header or a text descriptor makes a VMDK). Say it for a VMDK named `.img` or a raw image
   * named otherwise: detection from content would trust what a guest may have written.
   */
  format?: DiskFormat;
}

export type DiskFormat = 'vmdk' | 'raw';

/** How a NEW DEK is made and locked. */
export interface EncryptSpec {
  /** Who can unlock it (at least one): provider KEKs and/or passphrases. */
  lockers: LockerSpec[];
  /** Default 'aes-256-xts'. */
  cipher?: CipherName;
  /** Default 512. */
  unitSize?: DataUnitSize;
  cache?: KeyCache;
}

export interface OutputOptions {
  /** Default: the input's subformat (a raw input gives monolithicFlat when encrypting). */
  subformat?: OutputSubformat;
  /** Default: the input's ddb.adapterType, else the VMDK layer's default. */
  adapterType?: CreateDiskOptions['adapterType'];
  /** Default: the input's ddb.virtualHWVersion, else the VMDK layer's default. */
  hwVersion?: number | string;
  /** Grain size in bytes of a sparse output (default: the input's, else 64 KiB). */
  grainSize?: number;
  /**
   * Permission bits (0 to 0o777) of every file of the output, set before the output appears under
   * its final name, whatever the umask. Default: 0o600 for a decrypted (plain) output of an
   * encrypted input, since it holds the plaintext; otherwise the umask decides.
   */
  mode?: number;
  /**
   * The entries of the output's folder as the caller listed them before the job (at least those
   * that start with `.<output name>.vmseal-tmp-`). The job looks there for the staging folders a
   * killed job left under its output's name, instead of listing the folder itself: a batch lists
   * its output folder once for all its images, where a listing per image made its cost grow with
   * the square of its size. A staging folder left after the caller's listing is not seen (the next
   * job on that name cleans it).
   */
  folderEntries?: readonly string[];
}

export interface JobResult {
  operation: 'encrypt' | 'decrypt' | 'convert' | 'rekey-shallow' | 'rekey-deep' | 'snapshot-commit';
  input: string;
  /** The final path (for an in-place job or a rekey: the disk itself). */
  output: string;
  /** Of the output ('raw' for a raw image). */
  subformat: string;
  virtualSize: number;
  /** Bytes of the virtual disk read and written. */
  bytesProcessed: number;
  seconds: number;
  /** Whether the output is encrypted. */
  encrypted: boolean;
  /** The output's disk id, when encrypted. */
  diskId?: string;
  /** True when an interrupted in-place job was finished by this call. */
  resumed?: boolean;
  /** Deep rekey: which old key-encryption keys were retired or destroyed, and which were kept and why. */
  keyRotation?: KeyRotation;
  /** Things the caller should tell the user (e.g. a VMDK output named like a raw image). */
  notes?: string[];
}

export type { KeyCache, LockerSpec, UnlockOptions };

export { DEFAULT_CHUNK, MAX_CHUNK };
/** Chunks are whole data units for every unit size a disk may have. */
export const CHUNK_ALIGN = MAX_UNIT_SIZE;

export function checkJobOptions(o: JobOptions | undefined): Required<Pick<JobOptions, 'chunkSize' | 'depth'>> {
  if (o === undefined || o === null || typeof o !== 'object') throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object', 'options', o));
  const chunkSize = o.chunkSize ?? DEFAULT_CHUNK;
  if (!Number.isSafeInteger(chunkSize) || chunkSize < CHUNK_ALIGN || chunkSize > MAX_CHUNK || chunkSize % CHUNK_ALIGN !== 0) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected(`a multiple of ${CHUNK_ALIGN} from ${CHUNK_ALIGN} to ${MAX_CHUNK}`, 'chunkSize', o.chunkSize));
  }
  const depth = o.depth ?? 4;
  if (!Number.isSafeInteger(depth) || depth < 1 || depth > 64) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an integer from 1 to 64', 'depth', o.depth));
  }
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an AbortSignal', 'signal', o.signal));
  }
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('a function', 'onProgress', o.onProgress));
  }
  checkFormat(o.format, 'format');
  const entries = (o as OutputOptions).folderEntries;
  if (entries !== undefined && (!Array.isArray(entries) || !entries.every((e) => typeof e === 'string'))) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an array of file names', 'folderEntries', entries));
  }
  return { chunkSize, depth };
}

export function checkPath(p: unknown, name: string): string {
  if (typeof p !== 'string' || p.length === 0 || p.includes('\0')) throw new PipelineError('ERR_INVALID_ARGUMENT', expected('a file path', name, p));
  return p;
}

/** The output mode option: an integer of permission bits only (no setuid/setgid/sticky, no type bits). */
export function checkOutputMode(mode: unknown): number | undefined {
  if (mode === undefined) return undefined;
  if (typeof mode !== 'number' || !Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('permission bits from 0 to 0o777', 'mode', mode));
  }
  return mode;
}

/** A format option: 'vmdk', 'raw' or not given. */
export function checkFormat(format: unknown, name: string): DiskFormat | undefined {
  if (format === undefined || format === 'vmdk' || format === 'raw') return format;
  throw new PipelineError('ERR_INVALID_ARGUMENT', expectedOneOf(['vmdk', 'raw'], name, format));
}

/** The VMDK layer's open option for a format (nothing: detect). */
export function formatOption(format: DiskFormat | undefined): { format?: DiskFormat } {
  return format === undefined ? {} : { format };
}
