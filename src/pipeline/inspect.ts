/** inspectDisk (what `vmseal info` shows) and verifyDisk (read everything, check, hash, compare). */
import { resolve } from 'node:path';
import { ChainDisk, JOB_LINE, openDisk as openVmdk } from '../vmdk/index.js';
import { describeKeySafe, type LockerInfo } from '../keys/index.js';
import { LINE, assertDataCheck, encryptionOf, unlockDek, type UnlockOptions, type CipherName, type DataUnitSize } from '../disk/for-pipeline.js';
import { VmsealError, expected } from '../errors.js';
import { PipelineError, throwIfAborted } from './errors.js';
import { Journal, journalPathOf } from './journal.js';
import { COMMIT_OPERATION, isCommitJournal } from './commit-journal.js';
import { checkFormat, checkJobOptions, checkPath, formatOption, type DiskFormat, type JobOptions } from './options.js';
import { Yielder } from '../util/yield.js';
import { ContentHasher, CONTENT_BLOCK, FullHasher } from './content-hash.js';
import { alignedRanges, chunked, totalLength, unionRanges, type Span } from './plan.js';
import { ProgressTracker } from './progress.js';
import { openSource, type Source } from './source.js';

export interface DiskInfo {
  path: string;
  format: 'vmdk' | 'raw';
  subformat: string;
  /** Bytes. */
  virtualSize: number;
  /** Data-backed bytes of the virtual disk (sum of its allocated ranges). */
  allocatedSize: number;
  /** Bytes the disk's files use on the file system (like qemu-img's "disk size"). */
  diskSize: number;
  files: string[];
  encrypted: boolean;
  encryption?: {
    formatVersion: number;
    cipher: CipherName;
    unitSize: DataUnitSize;
    diskId: string;
    /** Every locker of the KeySafe, without secrets: kind, provider and key ids, KDF. */
    lockers: LockerInfo[];
    /** Whether the given keys open it now (KeySafe and authenticator); null when no keys were given. */
    unlockable: boolean | null;
    unlockError?: { code: string; message: string };
  };
  /** A snapshot chain (present only then): its layers top first, each with its CID and the parent CID it was made on. */
  chain?: Array<{ path: string; cid: string | undefined; parentCid: string | undefined }>;
  /** An in-place job that did not finish (finish it with resumeDisk or by running it again). */
  interrupted?: { operation: string; journal?: string };
}

export interface InspectOptions {
  /** Check whether these keys unlock the disk now (DiskInfo.encryption.unlockable). */
  keys?: UnlockOptions;
  /** What the file is (default: detected). */
  format?: DiskFormat;
  /** Stops the walk of the allocation metadata (an AbortError, code ERR_ABORTED). */
  signal?: AbortSignal;
}

/**
 * Describe a disk: format, subformat, sizes, files and — for an encrypted disk — cipher, unit size,
 * lockers and, when `keys` are given, whether they unlock it now. Reads no data and never decrypts.
 */
export async function inspectDisk(path: string, options: InspectOptions = {}): Promise<DiskInfo> {
  const p = resolve(checkPath(path, 'path'));
  if (options === null || typeof options !== 'object') throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const format = checkFormat(options.format, 'format');
  const what = `inspection of ${p}`;
  // A snapshot commit's journal beside the child: its parent is half merged, so the child is described alone.
  const commit = await isCommitJournal(p);
  const journal = commit
    ? null
    : await Journal.open(p).catch((err) => {
        if (err instanceof PipelineError)
          return { header: { operation: 'unknown (unreadable journal)' }, close: async () => undefined, path: `${p}.vmseal-journal` };
        throw err;
      });
  if (journal) await journal.close();
  const stored = await openVmdk(p, { readOnly: true, allowEncrypted: true, ...formatOption(format), ...(commit ? { layerOnly: true } : {}) });
  try {
    // In proportion to the metadata (grain tables, extents), never the capacity; stoppable.
    let allocatedSize = 0;
    const yielder = new Yielder();
    for await (const r of stored.allocatedRanges()) {
      allocatedSize += r.length;
      throwIfAborted(options.signal, what);
      await yielder.turn();
    }
    const info: DiskInfo = {
      path: p,
      format: stored.format,
      subformat: stored.subformat,
      virtualSize: stored.capacity,
      allocatedSize,
      diskSize: await stored.allocatedBytes(),
      files: stored.files(),
      encrypted: false,
    };
    if (stored instanceof ChainDisk) {
      info.chain = stored.layers().map((l) => ({ path: l.path, cid: l.descriptor?.get('CID'), parentCid: l.descriptor?.get('parentCID') }));
    }
    // The plain parent of an unfinished snapshot commit has the job line as its only encryption line.
    const job = stored.descriptor?.get(JOB_LINE);
    const enc = job !== undefined && stored.descriptor?.get(LINE.format) === undefined ? null : encryptionOf(stored);
    if (job !== undefined && !enc) info.interrupted = { operation: job };
    if (enc) {
      const e = enc.params;
      info.encrypted = true;
      info.encryption = {
        formatVersion: e.formatVersion,
        cipher: e.cipher,
        unitSize: e.unitSize,
        diskId: e.diskId,
        lockers: describeKeySafe(e.keySafe),
        unlockable: null,
      };
      if (options.keys) {
        try {
          const dek = await unlockDek(e, stored.capacity, options.keys, p);
          try {
            await assertDataCheck(stored, e, dek); // a key that opens a descriptor put on other data does not open the disk
          } finally {
            dek.fill(0);
          }
          info.encryption.unlockable = true;
        } catch (err) {
          if (!(err instanceof VmsealError)) throw err;
          info.encryption.unlockable = false;
          info.encryption.unlockError = { code: err.code, message: err.message };
        }
      }
      if (enc.job !== undefined) info.interrupted = { operation: enc.job };
    }
    if (journal) info.interrupted = { operation: journal.header.operation, journal: journal.path };
    if (commit) info.interrupted = { operation: COMMIT_OPERATION, journal: journalPathOf(p) };
    return info;
  } finally {
    await stored.close();
  }
}

export interface VerifyOptions extends JobOptions {
  /** Unlocks an encrypted disk (required for one). */
  keys?: UnlockOptions;
  /** A plain (or encrypted, with againstKeys) image whose content must be identical. */
  against?: string;
  againstKeys?: UnlockOptions;
  /** What `against` is (default: detected; see JobOptions.format, which says what `path` is). */
  againstFormat?: DiskFormat;
  /**
   * Also compute `sha256`, the SHA-256 of the whole raw image (default: false). It takes time in
   * proportion to the capacity (every hole is hashed as zeros), where everything else verify does
   * takes time in proportion to the data.
   */
  sha256?: boolean;
}

export interface VerifyResult {
  ok: boolean;
  path: string;
  encrypted: boolean;
  virtualSize: number;
  /** Bytes of the virtual disk read: its data-backed ranges (with `against`: those of either disk), rounded out to 64 KiB blocks. */
  bytesRead: number;
  /** The content hash of the (decrypted) virtual disk: see content-hash.ts and docs/pipeline.md. Depends on the content only. */
  contentHash: string;
  /** Only with `sha256: true`: SHA-256 of the whole (decrypted) virtual disk, holes as zeros — sha256sum of `qemu-img convert -O raw` of the plaintext. */
  sha256?: string;
  againstContentHash?: string;
  /** Only with `against` and `sha256: true`. */
  againstSha256?: string;
  /** Byte offset of the first difference from `against`. */
  firstMismatch?: number;
  /** What is wrong (empty when ok). */
  problems: string[];
}

/** One disk being verified: its reads, its hashes and how far it goes. */
interface Side {
  disk: Source['disk'];
  capacity: number;
  content: ContentHasher;
  full: FullHasher | undefined;
  buf: Buffer;
}

function side(source: Source, chunkSize: number, what: string, options: VerifyOptions): Side {
  const capacity = source.disk.capacity;
  return {
    disk: source.disk,
    capacity,
    content: new ContentHasher(),
    full: options.sha256 === true ? new FullHasher(capacity, what, options.signal) : undefined,
    buf: Buffer.allocUnsafeSlow(chunkSize),
  };
}

/** Read a side's part of `chunk` (nothing past its capacity) and hash it; returns the bytes read. */
async function readSide(s: Side, chunk: Span, onZeros: (n: number) => void): Promise<Buffer> {
  const n = Math.max(0, Math.min(chunk.length, s.capacity - chunk.offset));
  const data = s.buf.subarray(0, n);
  if (n === 0) return data;
  await s.disk.readInto(chunk.offset, data);
  s.content.update(chunk.offset, data);
  await s.full?.update(chunk.offset, data, onZeros);
  return data;
}

/**
 * Passes the data-backed ranges of an encrypted disk through, noting a range that does not hold
 * whole data units (every data-backed range of an encrypted disk holds whole grains or extents).
 */
async function* checkedUnits(ranges: AsyncIterable<Span>, unit: number | undefined, capacity: number, problems: string[]): AsyncGenerator<Span> {
  for await (const r of ranges) {
    if (unit && (r.offset % unit !== 0 || (r.length % unit !== 0 && r.offset + r.length !== capacity))) {
      problems.push(`data-backed range ${r.offset}+${r.length} does not hold whole ${unit}-byte data units`);
    }
    yield r;
  }
}

/**
 * Read a disk's data: open it (for an encrypted one: unlock, check the authenticator), read every
 * data-backed 64 KiB block (decrypting), compute its contentHash (and with `sha256`, the hash of the
 * whole raw image), and optionally compare it with `against` over the blocks either disk has data in
 * (holes of both read as zeros in both). Metadata errors (bad encryption lines, tampering, a corrupt
 * sparse table) throw, like opening does; a content difference is reported in the result (ok: false).
 */
export async function verifyDisk(path: string, options: VerifyOptions = {}): Promise<VerifyResult> {
  const { chunkSize: requestedChunk } = checkJobOptions(options);
  if (options.sha256 !== undefined && typeof options.sha256 !== 'boolean')
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('a boolean', 'sha256', options.sha256));
  const chunkSize = Math.ceil(requestedChunk / CONTENT_BLOCK) * CONTENT_BLOCK;
  const p = resolve(checkPath(path, 'path'));
  const what = `verify of ${p}`;
  const againstFormat = checkFormat(options.againstFormat, 'againstFormat');
  // check: 'full' — verify is where a grain claimed by two table entries must be found (docs/vmdk.md).
  const source = await openSource(p, {
    ...formatOption(options.format),
    ...(options.keys ? { keys: options.keys } : {}),
    encrypted: 'decrypt',
    plain: 'read',
    check: 'full',
  });
  let other: Source | undefined;
  try {
    const capacity = source.disk.capacity;
    const problems: string[] = [];
    const a = options.against !== undefined ? resolve(checkPath(options.against, 'against')) : undefined;
    if (a !== undefined) {
      other = await openSource(a, {
        ...formatOption(againstFormat),
        ...(options.againstKeys ? { keys: options.againstKeys } : {}),
        encrypted: 'decrypt',
        plain: 'read',
        check: 'full',
      });
      if (other.disk.capacity !== capacity) problems.push(`virtual sizes differ: ${capacity} bytes here, ${other.disk.capacity} in ${a}`);
    }
    const end = Math.max(capacity, other?.disk.capacity ?? 0);
    const unit = source.encryption?.unitSize;
    const theirs = other;
    // Blocks with data in this disk or the other, rounded out to whole 64 KiB blocks.
    const ranges = (check: boolean): AsyncIterable<Span> => {
      const mine = check ? checkedUnits(source.disk.allocatedRanges(), unit, capacity, problems) : source.disk.allocatedRanges();
      return alignedRanges(theirs ? unionRanges(mine, theirs.disk.allocatedRanges()) : mine, CONTENT_BLOCK, end);
    };
    const here = side(source, chunkSize, what, options);
    const there = other ? side(other, chunkSize, what, options) : undefined;
    // With sha256, progress counts the whole capacity (holes are hashed too); else the blocks read.
    const progress = new ProgressTracker('verify', 'verify', options.sha256 ? end : await totalLength(ranges(false)), options.onProgress);
    const yielder = new Yielder();
    const zeros = (n: number): void => progress.add(n);
    let bytesRead = 0;
    let firstMismatch: number | undefined;
    for await (const chunk of chunked(ranges(true), chunkSize)) {
      throwIfAborted(options.signal, what);
      const [x, y] = await Promise.all([readSide(here, chunk, zeros), there ? readSide(there, chunk, () => undefined) : undefined]);
      bytesRead += x.length;
      if (y && firstMismatch === undefined) {
        const n = Math.min(x.length, y.length);
        if (!x.subarray(0, n).equals(y.subarray(0, n))) {
          let i = 0;
          while (x[i] === y[i]) i++;
          firstMismatch = chunk.offset + i;
          problems.push(`content differs from ${a} first at byte ${firstMismatch}`);
        }
      }
      progress.add(chunk.length);
      await yielder.turn();
    }
    const result: VerifyResult = {
      ok: true,
      path: p,
      encrypted: source.encryption !== null,
      virtualSize: capacity,
      bytesRead,
      contentHash: here.content.digest(),
      problems,
    };
    if (here.full) result.sha256 = await here.full.digest(zeros);
    if (there) {
      result.againstContentHash = there.content.digest();
      if (there.full) result.againstSha256 = await there.full.digest();
    }
    if (firstMismatch !== undefined) result.firstMismatch = firstMismatch;
    progress.finish();
    result.ok = problems.length === 0;
    return result;
  } finally {
    await other?.close();
    await source.close();
  }
}
