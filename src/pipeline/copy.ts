/**
 * The copy job behind encrypt, decrypt, convert and deep rekey (copy mode): read the input's
 * data-backed ranges in chunks, decrypt (encrypted input), encrypt (encrypted output), write in
 * order into a new disk staged beside the output, commit it atomically.
 */
import { basename, dirname, extname, resolve } from 'node:path';
import {
  createDisk as createVmdk,
  openDisk as openVmdk,
  plannedDiskFiles,
  checkSparseFileFits,
  type VirtualDisk,
  type CreateDiskOptions,
} from '../vmdk/index.js';
import { isDiskUuid } from '../vmdk/create.js';
import {
  createDataCipher,
  type DataCipher,
  type EncryptedDisk,
  DiskError,
  generateDek,
  makeEncryptionParams,
  checkLockers,
  DEFAULT_CIPHER,
  DEFAULT_UNIT_SIZE,
  LINE,
  UNENCRYPTABLE_SUBFORMATS,
  checkEncryptionChoice,
  encryptionLines,
  type EncryptionParams,
  dataCheckOf,
  backUnitZero,
  standaloneLayerParams,
} from '../disk/for-pipeline.js';
import { runChunks, type Piece } from './engine.js';
import { PipelineError, throwIfAborted } from './errors.js';
import { acquireLocks, releaseLocks, NameReservations } from './lock.js';
import { checkOutputName, diskFiles, realDiskPath } from './paths.js';
import {
  checkJobOptions,
  checkOutputMode,
  checkPath,
  formatOption,
  type EncryptSpec,
  type JobOptions,
  type JobResult,
  type OutputOptions,
  type UnlockOptions,
} from './options.js';
import { alignedRanges, chunked, lcm, nonZeroRuns, totalLength, type Span } from './plan.js';
import { ProgressTracker } from './progress.js';
import { openSource, unlockSource } from './source.js';
import { copiesCiphertext } from './ciphertext-copy.js';
import { inherited, isSparseOutput, outputSubformat } from './output-shape.js';
import { ensureSpace } from './space.js';
import { StagedOutput, cleanStaleStages } from './staging.js';
import { jobProviders } from './job-keys.js';
import { openOutputWriter } from './output-writer.js';
import { kernelCopy } from './kernel-copy.js';
import { ChunkTransfer, TRANSFER_DEPTH, chunkTransferWanted, type ChunkTransferJob } from './chunk-transfer.js';
import { FolderCalls, folderFacts } from '../util/inline-fs.js';

export interface CopySpec {
  operation: 'encrypt' | 'decrypt' | 'convert' | 'rekey-deep';
  input: string;
  output: string;
  opts: JobOptions & OutputOptions;
  keys?: UnlockOptions;
  /** Encrypt the output under a new DEK. */
  encrypt?: EncryptSpec;
  /** Write a plain output from an encrypted input. */
  decrypt?: boolean;
  /** The input must be encrypted (decrypt, rekey) / must be plain (encrypt). */
  requireInput?: 'encrypted' | 'plain';
  /** The output replaces the input (deep rekey in copy mode). */
  replaceInput?: boolean;
}

const FLAT_ZERO_GRANULARITY = 64 * 1024;
const RAW_NAMES = /\.(img|raw)$/i;
/** The input's ddb.uuid when it is one createVmdk accepts (else the output gets a new one). */
function keptUuid(stored: VirtualDisk): Pick<CreateDiskOptions, 'uuid'> {
  const uuid = stored.descriptor?.get('ddb.uuid');
  return isDiskUuid(uuid) ? { uuid } : {};
}

async function unitZeroOf(disk: { readInto(position: number, target: Uint8Array): Promise<void> }, unitSize: number): Promise<Buffer> {
  const buf = Buffer.alloc(unitSize);
  await disk.readInto(0, buf);
  return buf;
}

/**
 * A raw output named `.vmdk` is refused: reading it back, vmseal (and qemu, and anyone) would have to
 * guess its format from its first bytes, which the guest wrote — a guest that writes a VMDK header
 * there would make the image read as another disk (qemu's format-probing bug class). The opposite
 * (a VMDK named .img or .raw) is fine: its kind is said by the subformat, and readers say --format vmdk.
 */
export function checkOutputKind(output: string, subformat: string): void {
  if (subformat === 'raw' && extname(output).toLowerCase() === '.vmdk') {
    throw new PipelineError(
      'ERR_INVALID_ARGUMENT',
      `the raw output ${output} is named .vmdk: reading it back would mean guessing its format from guest-written content (a guest could make it read as another disk); name a raw image .img or .raw, or choose a VMDK subformat`,
    );
  }
}

/** Set (or with undefined, remove) the encryption.job line of a disk, durably. */
export async function markDescriptor(path: string, job: string | undefined): Promise<void> {
  const d = await openVmdk(path, { allowEncrypted: true, format: 'vmdk' });
  try {
    await d.updateDescriptor((desc) => {
      if (job === undefined) desc.delete(LINE.job);
      else desc.set(LINE.job, job, { after: LINE.keySafe });
    });
  } finally {
    await d.close();
  }
}

export async function runCopy(spec: CopySpec): Promise<JobResult> {
  const { chunkSize: requestedChunk, depth } = checkJobOptions(spec.opts);
  const opts = spec.opts;
  const input = spec.replaceInput ? await realDiskPath(checkPath(spec.input, 'input')) : resolve(checkPath(spec.input, 'input'));
  const output = spec.replaceInput ? input : resolve(checkPath(spec.output, 'output'));
  // One statfs of the output folder tells whether its metadata calls run inline (tmpfs) and how
  // much room it has: for these checks, the staging, the free-space check and the copy path.
  const outFolder = await folderFacts(dirname(output));
  const calls = new FolderCalls(outFolder.memoryBacked);
  if (!spec.replaceInput) await checkOutputName(output, calls);
  // Checked before any lock: the first file a job creates is a lock file beside the output, and its
  // error would name that file instead of the missing folder.
  if (!(await calls.exists(dirname(output))))
    throw new PipelineError('ERR_INVALID_ARGUMENT', `cannot write ${output}: the folder ${dirname(output)} does not exist`);
  // A decrypted output holds the plaintext: private to its owner unless the caller says otherwise.
  const outMode = checkOutputMode(opts.mode) ?? (spec.decrypt ? 0o600 : undefined);
  if (input === output && !spec.replaceInput) throw new PipelineError('ERR_SAME_FILE', `the output ${output} is the input; write to another file`);
  if (spec.encrypt) {
    checkEncryptionChoice(spec.encrypt.cipher ?? DEFAULT_CIPHER, spec.encrypt.unitSize ?? DEFAULT_UNIT_SIZE);
    checkLockers(spec.encrypt.lockers);
  }
  const what = `${spec.operation} of ${input}`;
  throwIfAborted(opts.signal, what);
  const started = performance.now();
  // The input is only read (other readers may share it); the output, or an input replaced by the
  // job's result, is written and locked exclusively.
  const locks = await acquireLocks(
    spec.replaceInput
      ? [{ path: input, mode: 'exclusive' }]
      : [
          { path: input, mode: 'shared' },
          { path: output, mode: 'exclusive' },
        ],
    spec.operation,
  );
  // Every other file the job reads or writes is held by name (one lock file per folder).
  const names = new NameReservations();
  try {
    // A commit of an earlier run on this name that was killed half way is finished first; the keys
    // of one killed before its commit are removed.
    const providers = jobProviders(spec.keys, spec.encrypt?.lockers);
    await cleanStaleStages(dirname(output), basename(output), names, providers, opts.folderEntries);
    // A convert that keeps the encryption may copy the ciphertext as it is (copiesCiphertext below):
    // the input is opened locked and unlocked only if the copy needs its plaintext.
    const keepsEncryption = spec.operation === 'convert' && spec.encrypt === undefined && spec.decrypt !== true;
    let source = await openSource(input, {
      ...formatOption(opts.format),
      ...(spec.keys ? { keys: spec.keys } : {}),
      encrypted: spec.requireInput === 'plain' ? 'refuse' : 'decrypt',
      plain: spec.requireInput === 'encrypted' ? 'refuse' : 'read',
      ...(opts.threads ? { threads: opts.threads } : {}),
      ...(keepsEncryption ? { unlock: 'later' as const } : {}),
    });
    let stage: StagedOutput | undefined;
    let out: VirtualDisk | undefined;
    let ownCipher: DataCipher | undefined;
    const notes: string[] = [];
    try {
      const capacity = source.disk.capacity;
      const encrypting = spec.encrypt !== undefined || (source.encryption !== null && !spec.decrypt);
      const subformat = outputSubformat(source.stored, opts, encrypting);
      if (encrypting && UNENCRYPTABLE_SUBFORMATS.has(subformat)) {
        throw new PipelineError(
          'ERR_UNSUPPORTED_OUTPUT',
          subformat === 'raw'
            ? `an encrypted disk cannot be written as a raw image (no descriptor to carry its key); choose a VMDK subformat such as monolithicFlat, or decrypt`
            : `an encrypted disk cannot be written as streamOptimized, the subformat of OVF/OVA exports (vSphere refuses to export an encrypted VM to OVF, and compressing ciphertext gains nothing); choose another subformat, or decrypt`,
        );
      }
      checkOutputKind(output, subformat);
      const sparseOut = isSparseOutput(subformat);
      // An encrypted input converted with its encryption: its ciphertext is copied as it is when the
      // output can hold it unchanged (no key needed; the rule convertNeedsKeys tells callers), else
      // it is unlocked and re-encrypted.
      const cipherCopy = copiesCiphertext(source, subformat, opts, spec.keys !== undefined);
      if (source.locked && !cipherCopy) {
        source = await unlockSource(
          source,
          { ...(spec.keys ? { keys: spec.keys } : {}), ...(opts.threads ? { threads: opts.threads } : {}) },
          {
            name: input,
            why: sparseOut ? '' : ' (its holes become encrypted zeros in a flat output, which needs the DEK)',
          },
        );
      }
      const sourceFiles = source.stored.files().map((f) => resolve(f));
      if (!spec.replaceInput && sourceFiles.includes(output)) throw new PipelineError('ERR_SAME_FILE', `the output ${output} is a file of the input`);
      const force = opts.force === true || spec.replaceInput === true;
      // The whole set of files first: the new disk's (descriptor and every extent), and those of a
      // disk it replaces. All are reserved and checked before anything is created, so a --force
      // replaces all of them or none, and no other job can be writing (or reading) one of them.
      const planned = plannedDiskFiles(output, { capacity, subformat });
      const replacing = force ? await diskFiles(output, spec.replaceInput ? opts.format : undefined) : [];
      if (!spec.replaceInput) {
        const clash = planned.find((f) => sourceFiles.includes(f));
        if (clash) throw new PipelineError('ERR_SAME_FILE', `the output file ${clash} would replace a file of the input`);
        await names.reserve(sourceFiles, 'shared');
      }
      await names.reserve([...planned, ...replacing.filter((f) => dirname(f) === dirname(output))], 'exclusive');
      if (!force) {
        for (const f of planned) {
          if (await calls.exists(f))
            throw new PipelineError('ERR_OUTPUT_EXISTS', `${f} exists (a file the output needs); give another output name or force to replace it`);
        }
      }
      if (subformat !== 'raw' && RAW_NAMES.test(output))
        notes.push(`${output} is a VMDK (${subformat}) although its name ends like a raw image; commands that read it need --format vmdk`);
      // Checked above: the folder exists, stale stages are cleaned, and (without force) every planned name is free.
      stage = await StagedOutput.prepare(output, { force, names, providers, checked: true, folder: outFolder });
      const staged = stage;

      // The output's encryption: a new DEK, the input's own (copy of an encrypted disk), or none.
      let outParams: EncryptionParams | null = null;
      let outCipher: DataCipher | null = null;
      if (spec.encrypt) {
        const { cipher, unitSize } = checkEncryptionChoice(spec.encrypt.cipher ?? DEFAULT_CIPHER, spec.encrypt.unitSize ?? DEFAULT_UNIT_SIZE);
        if (capacity % unitSize !== 0)
          throw new DiskError('ERR_INVALID_ARGUMENT', `the capacity of ${input} (${capacity} bytes) is not a multiple of the ${unitSize}-byte data unit`);
        const dek = generateDek(cipher);
        try {
          const made = await makeEncryptionParams(dek, {
            cipher,
            unitSize,
            capacity,
            lockers: spec.encrypt.lockers,
            ...(spec.encrypt.cache ? { cache: spec.encrypt.cache } : {}),
            // Listed before use, so that an abort or a crash does not leave a key that locks nothing.
            onKeyCreated: (ref) => staged.recordKey(ref),
          });
          // The output's data check covers the plaintext of its unit 0, which is the input's.
          outParams = { ...made, dataCheck: dataCheckOf(dek, made.diskId, unitSize, await unitZeroOf(source.disk, unitSize)) };
          ownCipher = outCipher = createDataCipher(cipher, dek, unitSize, opts.threads ? { threads: opts.threads } : {});
        } finally {
          dek.fill(0);
        }
      } else if (cipherCopy) {
        // Same DEK, disk id, format version and lines: the authenticator binds none of the
        // descriptor's layout (cipher, unit size, capacity, disk id, version), and the data check's
        // unit 0 is copied byte for byte, so both stay valid as they are (docs/format.md).
        outParams = source.encryption;
      } else if (source.encryption && !spec.decrypt) {
        const encrypted = source.disk as EncryptedDisk;
        // Same DEK and disk id: a version-2 check is recomputed (it leaves out a pending value); a
        // version-1 disk stays version 1 (its authenticator binds the version).
        const check = encrypted.dataCheckValue(await unitZeroOf(encrypted, source.encryption.unitSize));
        // A layer of a snapshot chain is copied flattened: a standalone layer (no parentLayerId).
        const own = await standaloneLayerParams(source.encryption, source.disk.capacity, spec.keys ?? {}, source.disk.path);
        outParams = { ...own, ...(check !== undefined ? { dataCheck: check } : {}) };
        outCipher = encrypted.dataCipher;
      }
      out = await createVmdk(stage.stagePath, {
        capacity,
        subformat,
        // The staging folder is a new folder in the output's: on the file system the job's statfs saw.
        memoryBacked: outFolder.memoryBacked,
        ...inherited(source.stored, opts, sparseOut),
        // A disk rewritten in place of itself stays the same disk: same ddb.uuid (a backup history, vSphere).
        ...(spec.replaceInput ? keptUuid(source.stored) : {}),
        descriptorLines: outParams ? encryptionLines(outParams) : [],
      });
      await stage.checkTargets({ force, protect: spec.replaceInput ? [] : sourceFiles, planned });

      // What to process: everything for a flat encrypted output (holes become encrypted zeros),
      // else the input's data-backed ranges, rounded out to the output grain and the data units.
      const outGrain = out.grainSize;
      // A ciphertext copy of a flat input copies every unit: which of them hold zeros is not known without the key.
      const fullCopy = (outParams !== null && outGrain === undefined) || (cipherCopy && source.stored.grainSize === undefined);
      // Said, because whoever converts flat to sparse expects the zeros to go (they do with the keys).
      if (cipherCopy && sparseOut && source.stored.grainSize === undefined)
        notes.push(
          `the ciphertext of the flat ${input} was copied as it is: every data unit is an allocated grain of ${output}, zeros included (which units hold zeros is not known without the key); to leave them out, convert with the input's keys`,
        );
      const align = lcm(lcm(outParams?.unitSize ?? 512, source.encryption?.unitSize ?? 512), outGrain ?? 512);
      const chunkSize = Math.ceil(requestedChunk / align) * align;
      const ranges = (): AsyncIterable<Span> =>
        fullCopy ? alignedRanges([{ offset: 0, length: capacity }], align, capacity) : alignedRanges(source.disk.allocatedRanges(), align, capacity);
      const total = await totalLength(ranges());
      // One sparse file addresses 2 TiB (data plus tables), whatever the capacity: refused before any
      // data is copied, naming twoGbMaxExtentSparse, rather than failing at the grain that passes it.
      if (subformat === 'monolithicSparse' && outGrain !== undefined) checkSparseFileFits(capacity, total, outGrain, output);
      await ensureSpace(stage.dir, total, `the output ${output}`, outFolder.freeBytes);

      const progress = new ProgressTracker(spec.operation === 'rekey-deep' ? 'rekey-deep' : spec.operation, 'copy', total, opts.onProgress);
      const granularity = outGrain ?? FLAT_ZERO_GRANULARITY;
      const unit = outParams?.unitSize ?? 512;
      const disk = source.disk;
      const target = out;
      // A plain flat copy is done by the kernel (kernel-copy.ts); anything else, or a kernel that
      // cannot copy between these files, goes through the engine.
      const byKernel =
        outCipher === null &&
        (source.encryption === null || cipherCopy) &&
        (await kernelCopy({ source: source.stored, target, what, progress: (n) => progress.add(n), ...(opts.signal ? { signal: opts.signal } : {}) }));
      // A plain input into a plain or newly encrypted flat output, or an encrypted input decrypted
      // into a plain one, on tmpfs (unless VMSEAL_CHUNK_TRANSFER=0): one native job per chunk
      // (chunk-transfer.ts). On a disk the engine's direct writes (O_DIRECT) and write-behind stay.
      // A deep rekey in copy mode decrypts and re-encrypts in the same job.
      const transferCipher: Pick<ChunkTransferJob, 'cipher' | 'direction' | 'cipher2'> | null =
        (source.encryption === null || cipherCopy) && (outCipher === null || outCipher === ownCipher)
          ? { cipher: outCipher, direction: 'encrypt' }
          : source.encryption !== null && outCipher === null
            ? { cipher: (source.disk as EncryptedDisk).dataCipher, direction: 'decrypt' }
            : source.encryption !== null && outCipher !== null && outCipher === ownCipher
              ? { cipher: (source.disk as EncryptedDisk).dataCipher, direction: 'reencrypt', cipher2: outCipher }
              : null;
      const transfer =
        !byKernel && transferCipher !== null && chunkTransferWanted() && outFolder.memoryBacked
          ? await ChunkTransfer.open({ source: source.stored, plainSource: source.disk, target, ...transferCipher })
          : null;
      if (transfer) {
        try {
          await runChunks({
            chunks: chunked(ranges(), chunkSize),
            chunkSize,
            depth: Math.min(depth, TRANSFER_DEPTH),
            ...(opts.signal ? { signal: opts.signal } : {}),
            what,
            // The whole chunk (read, encrypt, write) is one native job: nothing is left to write.
            read: (chunk, buf) => transfer.run(chunk, buf),
            transform: async () => [],
            write: (offset, data) => target.write(offset, data),
            done: (chunk) => progress.add(chunk.length),
          });
        } finally {
          await transfer.close();
        }
      } else if (!byKernel) {
        const writer = await openOutputWriter(target, stage.dir, outFolder.memoryBacked);
        try {
          await runChunks({
            chunks: chunked(ranges(), chunkSize),
            chunkSize,
            depth,
            writeConcurrency: writer.writeConcurrency,
            ...(opts.signal ? { signal: opts.signal } : {}),
            what,
            read: (chunk, buf) => disk.readInto(chunk.offset, buf),
            async transform(chunk, buf) {
              // All-zero grains are left out of sparse and plain outputs: they read as zeros anyway
              // (not ciphertext: an all-zero unit of ciphertext does not decrypt to zeros).
              const pieces: Piece[] =
                fullCopy || cipherCopy
                  ? [{ offset: chunk.offset, data: buf }]
                  : nonZeroRuns(buf, chunk.offset, granularity).map((r) => ({
                      offset: r.offset,
                      data: buf.subarray(r.offset - chunk.offset, r.offset - chunk.offset + r.length),
                    }));
              if (outCipher) for (const p of pieces) await outCipher.encrypt(p.data, p.offset / unit);
              return pieces;
            },
            write: (offset, data) => writer.write(offset, data),
            done: (chunk) => progress.add(chunk.length),
          });
        } finally {
          await writer.close();
        }
      }
      progress.finish();
      throwIfAborted(opts.signal, what);
      // A sparse output never leaves unit 0 a hole (a hole reads as zeros under any key): the data check needs its ciphertext.
      if (outCipher && outParams?.dataCheck !== undefined) await backUnitZero(out, outCipher);
      await out.flush();
      const closing = out;
      out = undefined;
      await closing.close();

      const multiFile = replacing.length > 1;
      await source.close();
      await stage.commit({
        ...(outMode !== undefined ? { mode: outMode } : {}),
        replacing,
        deleteFirst: !spec.replaceInput,
        // The writer's flush above fsynced the one file of a sparse or raw output, and closing wrote
        // nothing more. (A text descriptor is written without an fsync, and a streamOptimized
        // output's close writes its footer: those files are fsynced by the commit.)
        synced: subformat === 'monolithicSparse' || subformat === 'raw',
        // Renaming several files over the input is not atomic: mark the old descriptor first so that a
        // crash half way shows an interrupted job (rolled forward by resume), never old metadata over new data.
        ...(spec.replaceInput && multiFile ? { beforeRenames: () => markDescriptor(input, 'rekey-deep-commit') } : {}),
      });
      return {
        operation: spec.operation,
        input,
        output,
        subformat,
        virtualSize: capacity,
        bytesProcessed: progress.bytesDone,
        seconds: (performance.now() - started) / 1000,
        encrypted: outParams !== null,
        ...(outParams ? { diskId: outParams.diskId } : {}),
        ...(notes.length > 0 ? { notes } : {}),
      };
    } catch (err) {
      if (out) await out.close().catch(() => undefined);
      if (stage) await stage.discard(providers).catch(() => undefined);
      throw err;
    } finally {
      ownCipher?.dispose();
      await source.close().catch(() => undefined);
    }
  } finally {
    names.close();
    await releaseLocks(locks);
  }
}
