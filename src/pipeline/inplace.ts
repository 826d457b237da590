/**
 * In-place jobs: encryption in place and deep rekey in place (every data-backed byte rewritten
 * where it is), journaled so that a crash at any point is finished by running the same call again
 * or resumeDisk(); and shallow rekey (only the KeySafe changes).
 *
 * Order of a journaled job (see journal.ts for the per-chunk protocol):
 *   1. the journal is created with everything needed to finish: the new encryption lines (KeySafe
 *      wrapped), the old KeySafe for a rekey, and the whole descriptor during and after the job;
 *   2. the descriptor "during" is written: it carries `encryption.job`, so no tool opens the half
 *      converted disk as plain (the VMDK layer refuses encryption lines) or as finished
 *      (src/disk refuses ERR_INTERRUPTED_JOB);
 *   3. chunks are rewritten in order, each one journaled;
 *   4. the descriptor "after" is written, then the journal is wiped and removed.
 * Resume repeats step 2 if no chunk was recorded yet, continues step 3 from the journal's state,
 * and repeats step 4: every step is idempotent.
 */
import { chmod, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { openDisk as openVmdk, ChainDisk, Descriptor, type VirtualDisk } from '../vmdk/index.js';
import {
  createDataCipher,
  type DataCipher,
  DiskError,
  generateDek,
  makeEncryptionParams,
  reuseCreatedKeys,
  unlockDek,
  checkLockers,
  encryptionOf,
  readEncryptionParams,
  DEFAULT_CIPHER,
  DEFAULT_UNIT_SIZE,
  LINE,
  MAX_VALUE_LENGTH,
  UNENCRYPTABLE_SUBFORMATS,
  checkEncryptionChoice,
  encryptionLines,
  unsafeValueReason,
  type CipherName,
  type DataUnitSize,
  type EncryptionParams,
  dataCheckOf,
  checkDataCheck,
  unitZeroBacked,
} from '../disk/for-pipeline.js';
import { allocateCipherBuffer } from '../xts/index.js';
import { describeKeySafe, rewrapKeySafe, sealDek, type KeyRef, type LockerInfo } from '../keys/index.js';
import { expected } from '../errors.js';
import { locateDescriptor, readDescriptorBytes, removeStaleDescriptorTemps, withoutCid, writeDescriptor, type DescriptorLocation } from './descriptor-io.js';
import { PipelineError, abortError } from './errors.js';
import { ChunkStatus, Journal, hashCopy, journalPathOf, type InPlaceOperation, type JournalHeader } from './journal.js';
import { acquireLock, acquireLocks, releaseLocks, NameReservations } from './lock.js';
import { diskFiles, realDiskPath } from './paths.js';
import {
  checkFormat,
  checkJobOptions,
  checkPath,
  formatOption,
  type DiskFormat,
  type EncryptSpec,
  type JobOptions,
  type JobResult,
  type KeyCache,
  type LockerSpec,
  type UnlockOptions,
} from './options.js';
import { alignedRanges, chunked, lcm, totalLength } from './plan.js';
import { ProgressTracker } from './progress.js';
import { cleanStaleStages, fsyncPath } from './staging.js';
import { ensureSpace } from './space.js';
import { markDescriptor, runCopy } from './copy.js';
import { retireReplacedKeys } from './retire.js';
import { journalDifferences } from './journal-match.js';
import { commitSnapshot, type CommitResult } from './commit.js';
import { isCommitJournal } from './commit-journal.js';
import { discardJobKeys, jobProviders } from './job-keys.js';
import { chainNotInPlace, deepRekeyChain, pendingChainRekey, settleChainRekey } from './chain-deep-rekey.js';

/** Set the encryption lines (in their order, right after createType) and the job line on a descriptor. */
function withLines(base: Descriptor, params: EncryptionParams | null, job: string | undefined): Descriptor {
  const d = base.clone();
  if (params) {
    let after: string | undefined;
    for (const [k, v] of encryptionLines(params)) {
      d.set(k, v, after ? { after } : {});
      after = k;
    }
  }
  if (job !== undefined) d.set(LINE.job, job, { after: LINE.keySafe });
  else d.delete(LINE.job);
  return d;
}

/** Unlock options implied by the lockers of a new KeySafe (its providers and passphrase), merged with `keys`. */
function keysFromLockers(lockers: LockerSpec[] | undefined, keys: UnlockOptions | undefined, cache: KeyCache | undefined): UnlockOptions {
  const providers = [...(Array.isArray(keys?.providers) ? keys.providers : keys?.providers ? Object.values(keys.providers) : [])];
  let passphrase = keys?.passphrase;
  for (const l of lockers ?? []) {
    if (l.kind === 'provider' && !providers.includes(l.provider)) providers.push(l.provider);
    if (l.kind === 'passphrase' && passphrase === undefined) passphrase = l.passphrase;
  }
  const c = keys?.cache ?? cache;
  return { ...(providers.length ? { providers } : {}), ...(passphrase !== undefined ? { passphrase } : {}), ...(c ? { cache: c } : {}) };
}

function b64(d: Descriptor): string {
  return d.toBuffer().toString('base64');
}

interface InPlaceStart {
  operation: InPlaceOperation;
  path: string;
  opts: JobOptions;
  keys: UnlockOptions;
  encrypt?: EncryptSpec;
}

/** Begin a journaled job: checks, new DEK, journal, descriptor "during". Returns the journal (the caller runs it). */
async function startInPlace(s: InPlaceStart, chunkSize: number): Promise<Journal> {
  const stored = await openVmdk(s.path, { allowEncrypted: true, ...formatOption(s.opts.format) });
  let header: JournalHeader;
  let journalDek: Buffer | undefined;
  try {
    if (stored.format === 'raw' || UNENCRYPTABLE_SUBFORMATS.has(stored.subformat) || !stored.descriptor) {
      throw new PipelineError(
        'ERR_UNSUPPORTED_OUTPUT',
        `${s.path} is ${stored.subformat === 'raw' ? 'a raw image, which has no descriptor to carry a key' : `${stored.subformat}, which cannot hold an encrypted disk`}; encrypt it into a new VMDK instead`,
      );
    }
    refuseChain(stored, s.path, (await stat(s.path)).mode, s.operation === 'encrypt-in-place' ? 'an encryption in place' : 'a deep rekey');
    const enc = encryptionOf(stored);
    if (enc?.job !== undefined)
      throw new DiskError('ERR_INTERRUPTED_JOB', `${s.path} has an unfinished ${enc.job} job but no journal; it cannot be resumed safely`);
    if (s.operation === 'encrypt-in-place' && enc) throw new DiskError('ERR_DISK_ENCRYPTED', `${s.path} is already encrypted; use rekey to change its keys`);
    if (s.operation === 'rekey-deep-in-place' && !enc) throw new DiskError('ERR_NOT_ENCRYPTED', `${s.path} is not encrypted; encrypt it first`);
    const capacity = stored.capacity;
    const from = enc?.params ?? null;
    const spec = s.encrypt!;
    const { cipher, unitSize } = checkEncryptionChoice(spec.cipher ?? from?.cipher ?? DEFAULT_CIPHER, spec.unitSize ?? from?.unitSize ?? DEFAULT_UNIT_SIZE);
    if (capacity % unitSize !== 0)
      throw new DiskError('ERR_INVALID_ARGUMENT', `the capacity of ${s.path} (${capacity} bytes) is not a multiple of the ${unitSize}-byte data unit`);
    let fromCipher: DataCipher | undefined;
    if (from) {
      const oldDek = await unlockDek(from, capacity, s.keys, s.path); // the keys open it, the authenticator holds
      try {
        fromCipher = createDataCipher(from.cipher, oldDek, from.unitSize);
        // A descriptor that does not belong to this data is refused, not rekeyed into one that does.
        if (from.formatVersion >= 2) (await checkDataCheck(stored, from, oldDek, fromCipher)).key.dispose();
      } catch (err) {
        fromCipher?.dispose();
        throw err;
      } finally {
        oldDek.fill(0);
      }
    }
    let unit0: Buffer;
    try {
      unit0 = await unitZeroForJob(stored, fromCipher, unitSize);
    } finally {
      fromCipher?.dispose();
    }
    const dek = generateDek(cipher);
    let to: EncryptionParams;
    try {
      const made = await makeEncryptionParams(dek, {
        cipher,
        unitSize,
        capacity,
        lockers: checkLockers(spec.lockers),
        ...(spec.cache ? { cache: spec.cache } : {}),
      });
      // The job rewrites ciphertext, not plaintext: the final lines' data check is known now.
      to = { ...made, dataCheck: dataCheckOf(dek, made.diskId, unitSize, unit0) };
      journalDek = Buffer.from(dek); // keys the journal's MAC; wiped once the journal is made
    } finally {
      dek.fill(0);
    }
    const base = stored.descriptor as Descriptor;
    const during = s.operation === 'encrypt-in-place' ? withLines(base, to, s.operation) : withLines(base, null, s.operation);
    const final = withLines(base, to, undefined);
    header = {
      version: 2,
      operation: s.operation,
      disk: basename(s.path),
      capacity,
      chunkSize,
      align: lcm(lcm(unitSize, from?.unitSize ?? 512), 4096),
      from,
      to,
      started: new Date().toISOString(),
      descriptor: { during: b64(during), final: b64(final) },
    };
  } catch (err) {
    journalDek?.fill(0);
    throw err;
  } finally {
    await stored.close();
  }
  // The journal needs a chunk's copy; a flat extent that is a sparse file also allocates its holes as
  // the job writes ciphertext over them (encrypted zeros are not zeros). Both are checked up front so
  // that a job does not run out of space half way on a file system that could never hold it.
  const holes = await flatExtentHoles(s.path, header.descriptor.final);
  let journal: Journal;
  try {
    await ensureSpace(
      dirname(s.path),
      chunkSize + (128 << 10) + holes,
      holes > 0 ? `the journal of ${s.path} and the ${holes} bytes of holes in its flat extents that the job fills` : `the journal of ${s.path}`,
    );
    journal = await Journal.create(s.path, header, journalDek!);
  } finally {
    journalDek!.fill(0);
  }
  try {
    await writeDescriptor(await locateDescriptor(s.path), Buffer.from(header.descriptor.during, 'base64'));
  } catch (err) {
    await journal.close();
    throw err;
  }
  return journal;
}

/**
 * The plaintext of unit 0 (`length` bytes) of a disk an in-place job is about to start on, decrypted
 * with `cipher` if it is encrypted. A sparse disk whose unit 0 is a hole gets a grain of zeros (as
 * ciphertext under the old key, if any) first — before the journal, so the job's chunk plan includes
 * it and the job encrypts it: an encrypted disk's unit 0 is never a hole.
 */
async function unitZeroForJob(stored: VirtualDisk, cipher: DataCipher | undefined, length: number): Promise<Buffer> {
  const span = Math.max(length, cipher?.unitSize ?? 0);
  if (stored.grainSize !== undefined && !(await unitZeroBacked(stored, span))) {
    const zeros = Buffer.alloc(Math.min(stored.grainSize, stored.capacity));
    if (cipher) await cipher.encrypt(zeros, 0);
    await stored.write(0, zeros); // same content as the hole: zeros
    await stored.flush();
    return Buffer.alloc(length);
  }
  const buf = Buffer.alloc(span);
  await stored.readInto(0, buf);
  if (cipher) await cipher.decrypt(buf, 0);
  return buf.subarray(0, length);
}

/** Run (or continue) a journaled job to its end. */
interface JournalKeys {
  /** Unlocks the KeySafe before the job (rekey). */
  from: UnlockOptions;
  /** Unlocks the KeySafe after the job. */
  to: UnlockOptions;
}

async function runJournal(path: string, journal: Journal, keys: JournalKeys, opts: JobOptions, resumed: boolean): Promise<JobResult> {
  // Every way out closes the journal's file and wipes its key: a journal refused before the job
  // starts (a failed authentication, another disk's journal, a disk that will not open) too.
  try {
    return await continueJournal(path, journal, keys, opts, resumed);
  } finally {
    await journal.close();
  }
}

async function continueJournal(path: string, journal: Journal, keys: JournalKeys, opts: JobOptions, resumed: boolean): Promise<JobResult> {
  const h = journal.header;
  if (h.disk !== basename(path)) throw new PipelineError('ERR_JOURNAL', `the journal ${journal.path} belongs to ${h.disk}, not ${basename(path)}`);
  if (h.operation === 'restore-over') {
    // A rollback from a backup repository is finished by src/backup (resumeBackupRestore), above this layer.
    throw new DiskError(
      'ERR_INTERRUPTED_JOB',
      `${path} is in the middle of a rollback to backup point ${h.restore?.point ?? '?'}; finish it with \`vmseal resume ${path}\` (resumeBackupRestore)`,
    );
  }
  const started = performance.now();
  await removeStaleDescriptorTemps(path);
  const loc = await locateDescriptor(path);
  await trustJournal(path, journal, loc, keys, opts);
  if (h.operation === 'rekey-shallow') {
    await writeDescriptor(loc, Buffer.from(h.descriptor.final, 'base64'));
    if (h.layers?.length) await rewriteLayers(path, h.layers);
    await journal.finish();
    return result(h, path, 0, started, resumed);
  }
  // On resume the descriptor may be torn (a crash while an embedded one was rewritten, "during" or
  // "final"): write "during" whole again before opening the disk; "final" follows at the end.
  if (resumed || journal.state === null) await writeDescriptor(loc, Buffer.from(h.descriptor.during, 'base64'));
  const stored = await openVmdk(path, { allowEncrypted: true, ...formatOption(opts.format) });
  let oldCipher: DataCipher | undefined;
  let newCipher: DataCipher | undefined;
  try {
    if (stored.capacity !== h.capacity)
      throw new PipelineError('ERR_JOURNAL', `the journal ${journal.path} was made for a capacity of ${h.capacity} bytes, the disk has ${stored.capacity}`);
    const to = h.to as EncryptionParams;
    const newDek = await unlockDek(to, h.capacity, keys.to, `${path} (new key in its journal)`);
    try {
      newCipher = createDataCipher(to.cipher as CipherName, newDek, to.unitSize as DataUnitSize, opts.threads ? { threads: opts.threads } : {});
    } finally {
      newDek.fill(0);
    }
    if (h.from) {
      const from = h.from as EncryptionParams;
      const oldDek = await unlockDek(from, h.capacity, keys.from, `${path} (old key in its journal)`);
      try {
        oldCipher = createDataCipher(from.cipher as CipherName, oldDek, from.unitSize as DataUnitSize, opts.threads ? { threads: opts.threads } : {});
      } finally {
        oldDek.fill(0);
      }
    }
    const plan = () => chunked(alignedRanges(stored.allocatedRanges(), h.align, h.capacity), h.chunkSize);
    const total = await totalLength(plan());
    const progress = new ProgressTracker(h.operation === 'encrypt-in-place' ? 'encrypt' : 'rekey-deep', 'copy', total, opts.onProgress);
    const state = journal.state;
    const transform = async (buf: Buffer, offset: number): Promise<void> => {
      if (oldCipher) await oldCipher.decrypt(buf, offset / oldCipher.unitSize);
      await newCipher!.encrypt(buf, offset / newCipher!.unitSize);
    };
    let k = -1;
    for await (const chunk of plan()) {
      k++;
      if (state && (k < state.chunk || (k === state.chunk && state.status === ChunkStatus.DONE))) {
        progress.add(chunk.length);
        continue;
      }
      if (opts.signal?.aborted) {
        throw abortError(opts.signal, `${h.operation} of ${path} (stopped at a chunk boundary; run the same command again or resume to finish it)`);
      }
      let original: Buffer;
      if (state && k === state.chunk && state.status === ChunkStatus.IN_PROGRESS && journal.state === state) {
        if (state.offset !== chunk.offset || state.length !== chunk.length) {
          throw new PipelineError(
            'ERR_JOURNAL',
            `the journal ${journal.path} names chunk ${k} at ${state.offset}+${state.length}, but the disk's chunk ${k} is ${chunk.offset}+${chunk.length}`,
          );
        }
        original = await journal.readCopy(); // the disk's bytes may be half rewritten: start from the saved copy
      } else {
        original = allocateCipherBuffer(chunk.length); // native-owned: encrypted in place, no copies
        await stored.readInto(chunk.offset, original);
        await journal.saveCopy(original);
        await journal.record(k, ChunkStatus.IN_PROGRESS, chunk.offset, chunk.length, hashCopy(original));
      }
      await transform(original, chunk.offset);
      await stored.write(chunk.offset, original);
      await stored.flush();
      await journal.record(k, ChunkStatus.DONE, chunk.offset, chunk.length, journal.state!.copyHash);
      progress.add(chunk.length);
    }
    progress.finish();
    await stored.close();
    await writeDescriptor(loc, Buffer.from(h.descriptor.final, 'base64'));
    await journal.finish();
    return result(h, path, total, started, resumed, stored.subformat);
  } catch (err) {
    throw outOfSpaceIsResumable(err, h.operation, path);
  } finally {
    oldCipher?.dispose();
    newCipher?.dispose();
    await stored.close().catch(() => undefined);
  }
}

/**
 * A shallow rekey of a snapshot chain: write each layer's final descriptor (the new KeySafe), holding
 * the layers' locks exclusively. A layer below the top has children: it is read-only (mode 0444), so
 * its write bits are set for the write and cleared again (as createSnapshot left them).
 */
async function rewriteLayers(top: string, layers: NonNullable<JournalHeader['layers']>): Promise<void> {
  const paths = layers.map((l) => resolve(dirname(top), l.path));
  const locks = await acquireLocks(paths, 'rekey-shallow (snapshot layer)');
  try {
    for (const [i, l] of layers.entries()) {
      const at = paths[i];
      await removeStaleDescriptorTemps(at);
      const mode = (await stat(at)).mode & 0o777;
      await chmod(at, mode | 0o200);
      await writeDescriptor(await locateDescriptor(at), Buffer.from(l.final, 'base64'));
      await chmod(at, mode & ~0o222);
      await fsyncPath(at);
    }
  } finally {
    await releaseLocks(locks);
  }
}

/** Refuse a job that rewrites one layer of a snapshot chain as if it were the whole disk. */
function refuseChain(stored: VirtualDisk, path: string, mode: number, what: string): void {
  if (stored instanceof ChainDisk || (mode & 0o222) === 0) {
    throw new PipelineError(
      'ERR_SNAPSHOT_CHAIN',
      `${path} is ${stored instanceof ChainDisk ? 'a snapshot (the top of a chain)' : 'a layer with snapshots of its own (mode 0444)'}: ${what} does not work on snapshot chains yet. Commit the snapshots first (vmseal snapshot commit on the top, until one layer is left), then run it again`,
    );
  }
}

function result(h: JournalHeader, path: string, bytes: number, started: number, resumed: boolean, subformat = ''): JobResult {
  return {
    operation: h.operation === 'encrypt-in-place' ? 'encrypt' : h.operation === 'rekey-shallow' ? 'rekey-shallow' : 'rekey-deep',
    input: path,
    output: path,
    subformat,
    virtualSize: h.capacity,
    bytesProcessed: bytes,
    seconds: (performance.now() - started) / 1000,
    encrypted: true,
    diskId: h.to.diskId,
    ...(resumed ? { resumed: true } : {}),
  };
}

/**
 * True when the disk is already in the state a job would leave it in: encrypted, no job pending,
 * unlockable with `to` (and, for a rekey, no longer with `from`). A re-run of a job that completed
 * just before a crash then returns at once instead of failing or doing the work twice.
 */
async function finishedEarlier(path: string, format: DiskFormat | undefined, to: UnlockOptions, from?: UnlockOptions): Promise<EncryptionParams | null> {
  const stored = await openVmdk(path, { readOnly: true, allowEncrypted: true, ...formatOption(format) });
  try {
    const enc = encryptionOf(stored);
    if (!enc || enc.job !== undefined) return null;
    const opens = async (keys: UnlockOptions): Promise<boolean> => {
      try {
        (await unlockDek(enc.params, stored.capacity, keys, path)).fill(0);
        return true;
      } catch {
        return false;
      }
    };
    if (from && (await opens(from))) return null;
    return (await opens(to)) ? enc.params : null;
  } catch {
    return null;
  } finally {
    await stored.close();
  }
}

function alreadyDone(operation: JobResult['operation'], path: string, params: EncryptionParams, capacity: number): JobResult {
  return {
    operation,
    input: path,
    output: path,
    subformat: '',
    virtualSize: capacity,
    bytesProcessed: 0,
    seconds: 0,
    encrypted: true,
    diskId: params.diskId,
    resumed: true,
  };
}

async function capacityOf(path: string, format: DiskFormat | undefined): Promise<number> {
  const d = await openVmdk(path, { readOnly: true, allowEncrypted: true, ...formatOption(format) });
  await d.close();
  return d.capacity;
}

/**
 * Run `fn` holding the disk's lock and the names of every file it rewrites (descriptor, extents,
 * journal) exclusively, so that no other job writes, replaces or reads one of them meanwhile
 * (e.g. a job whose output is named like this disk's flat extent).
 */
async function withDiskLock<T>(path: string, operation: string, format: DiskFormat | undefined, fn: (names: NameReservations) => Promise<T>): Promise<T> {
  const lock = await acquireLock(path, operation);
  const names = new NameReservations();
  try {
    await names.reserve([...(await diskFiles(path, format)), journalPathOf(path)], 'exclusive');
    return await fn(names);
  } finally {
    names.close();
    await lock.release();
  }
}

export type EncryptInPlaceOptions = JobOptions & EncryptSpec & { keys?: UnlockOptions };

/**
 * Encrypt a plain VMDK where it is (no second copy): journaled, resumable. Run the same call again
 * after a crash (or resumeDisk) and it finishes; the journal `<disk>.vmseal-journal` holds one
 * chunk's original bytes at a time. raw images and streamOptimized disks are refused.
 */
export async function encryptInPlace(path: string, options: EncryptInPlaceOptions): Promise<JobResult> {
  const p = await realDiskPath(checkPath(path, 'path'));
  const { chunkSize } = checkJobOptions(options);
  const { lockers, cipher, unitSize, cache, keys, ...opts } = options;
  checkLockers(lockers);
  const unlock = keysFromLockers(lockers, keys, cache);
  const both = { from: unlock, to: unlock };
  return withDiskLock(p, 'encrypt-in-place', opts.format, async () => {
    const existing = await Journal.open(p);
    if (existing) {
      await refuseOtherLockers(p, existing, { lockers, ...(cipher ? { cipher } : {}), ...(unitSize ? { unitSize } : {}) });
      return runJournal(p, existing, both, opts, true);
    }
    const done = await finishedEarlier(p, opts.format, unlock);
    if (done) return alreadyDone('encrypt', p, done, await capacityOf(p, opts.format));
    const journal = await startInPlace(
      {
        operation: 'encrypt-in-place',
        path: p,
        opts,
        keys: unlock,
        encrypt: { lockers, ...(cipher ? { cipher } : {}), ...(unitSize ? { unitSize } : {}), ...(cache ? { cache } : {}) },
      },
      chunkSize,
    );
    return runJournal(p, journal, both, opts, false);
  });
}

export interface DeepRekeyOptions extends JobOptions {
  /** Unlocks the current DEK. */
  keys: UnlockOptions;
  /**
   * Lockers of the new DEK (default: a new KEK from each provider of the current fqid lockers, made for
   * this disk; passphrase lockers need `lockers`).
   */
  lockers?: LockerSpec[];
  /**
   * Afterwards, retire the old KEKs that were made for this disk alone and no longer lock it, so an
   * old copy of the disk does not open (default: true). Shared KEKs stay active. See `keyRotation`.
   */
  retireOldKeys?: boolean;
  /** Destroy those old KEKs instead of retiring them (default: false). Old backups then need `keys restore`. */
  destroyOldKeys?: boolean;
  /** Default: unchanged. */
  cipher?: CipherName;
  /** Default: unchanged. */
  unitSize?: DataUnitSize;
  /** Rewrite the data where it is, journaled (default: false: a new image under a temporary name replaces the disk atomically). */
  inPlace?: boolean;
  cache?: KeyCache;
}

/**
 * Deep rekey: a new DEK, every data-backed byte re-encrypted. Copy mode (default) needs room for a
 * second image and replaces the disk atomically; in place it is journaled and resumable (run the
 * same call again, or resumeDisk, after a crash).
 */
export async function deepRekey(path: string, options: DeepRekeyOptions): Promise<JobResult> {
  const p = await realDiskPath(checkPath(path, 'path'));
  const { chunkSize } = checkJobOptions(options);
  const { keys, lockers: given, cipher, unitSize, inPlace, cache, retireOldKeys, destroyOldKeys, ...opts } = options;
  if (keys === null || typeof keys !== 'object')
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? }', 'keys', keys));
  const retire = { ...(retireOldKeys !== undefined ? { retireOldKeys } : {}), ...(destroyOldKeys !== undefined ? { destroyOldKeys } : {}) };
  const rotate = (from: EncryptionParams | null, done: JobResult, providers: UnlockOptions['providers']): Promise<JobResult> =>
    withRotation(p, from, done, providers, { ...retire, cache: cache ?? keys.cache, format: opts.format });
  // A deep rekey of this disk's snapshot chain that was killed: finished if it had committed (then
  // this call's work is done), else rolled back and run again below.
  const pendingBase = await pendingChainRekey(p);
  if (pendingBase) {
    const newKeys = keysFromLockers(given, { ...keys, passphrase: undefined }, cache);
    const settled = await settleChainRekey(p, pendingBase, newKeys, jobProviders(keys, given ?? []));
    if (settled) return rotate(settled.from, settled.result, newKeys.providers);
  }
  if (inPlace) {
    // A re-run after a crash continues the journal (with the lockers it fixed: others are refused).
    const existing = await Journal.open(p);
    if (existing) {
      if (given !== undefined) await refuseOtherLockers(p, existing, { lockers: given, ...(cipher ? { cipher } : {}), ...(unitSize ? { unitSize } : {}) });
      await existing.close();
      const newKeys = keysFromLockers(given, { ...keys, passphrase: undefined }, cache);
      const done = await resumeDisk(p, { ...opts, ...retire, keys, newKeys });
      if (done) return done;
    }
  }
  let chain: boolean;
  {
    const stored = await openVmdk(p, { readOnly: true, allowEncrypted: true, ...formatOption(opts.format) });
    try {
      chain = stored instanceof ChainDisk || ((await stat(p)).mode & 0o222) === 0;
    } finally {
      await stored.close();
    }
  }
  if (chain && inPlace) throw chainNotInPlace(p);
  const from = await readEncryptionParams(p, formatOption(opts.format));
  const lockers = given ?? newProviderLockers(p, from, keys);
  const newKeys = keysFromLockers(lockers, { ...keys, passphrase: undefined }, cache);
  const encrypt: EncryptSpec = { lockers, ...(cipher ? { cipher } : {}), ...(unitSize ? { unitSize } : {}), ...(cache ? { cache } : {}) };
  if (chain) {
    // Every layer, base to top, under one new DEK (chain-deep-rekey.ts).
    const done = await deepRekeyChain(p, { keys, newKeys, encrypt, opts, providers: jobProviders(keys, lockers) });
    return rotate(from, done, newKeys.providers);
  }
  // Checked under the lock (which also clears a stale lock of a killed run).
  const done = await withDiskLock(p, 'rekey-deep', opts.format, () => finishedEarlier(p, opts.format, newKeys, keys));
  if (done) return alreadyDone('rekey-deep', p, done, await capacityOf(p, opts.format));
  if (!inPlace) {
    const copied = await runCopy({
      operation: 'rekey-deep',
      input: p,
      output: p,
      opts: { ...opts, force: true },
      keys,
      encrypt,
      requireInput: 'encrypted',
      replaceInput: true,
    });
    return rotate(from, copied, newKeys.providers);
  }
  const rewritten = await withDiskLock(p, 'rekey-deep-in-place', opts.format, async () => {
    const journal = await startInPlace({ operation: 'rekey-deep-in-place', path: p, opts, keys, encrypt }, chunkSize);
    return runJournal(p, journal, { from: keys, to: newKeys }, opts, false);
  });
  return rotate(from, rewritten, newKeys.providers);
}

/**
 * After a deep rekey: retire the old KEKs made for this disk alone (see retire.ts) and report it in
 * the result. `from` is the encryption before the rekey (from the disk, or from an interrupted job's
 * journal).
 */
async function withRotation(
  path: string,
  from: EncryptionParams | null,
  done: JobResult,
  providers: UnlockOptions['providers'],
  opts: { retireOldKeys?: boolean; destroyOldKeys?: boolean; cache?: KeyCache | undefined; format?: DiskFormat | undefined },
): Promise<JobResult> {
  if (opts.retireOldKeys === false || !from) return done;
  const to = await readEncryptionParams(path, formatOption(opts.format));
  if (!to || to.diskId === from.diskId) return done;
  const list = Array.isArray(providers) ? providers : providers ? Object.values(providers) : [];
  return {
    ...done,
    keyRotation: await retireReplacedKeys(from, to, list, { destroy: opts.destroyOldKeys === true, ...(opts.cache ? { cache: opts.cache } : {}) }),
  };
}

/**
 * A re-run of an interrupted job finishes it with the journal's new KeySafe: refuse (and close the
 * journal) when the run asks for something else, naming each difference.
 */
async function refuseOtherLockers(path: string, journal: Journal, spec: Pick<EncryptSpec, 'lockers' | 'cipher' | 'unitSize'>): Promise<void> {
  const diffs = await journalDifferences(journal.header.to, spec);
  if (diffs.length === 0) return;
  await journal.close();
  throw new PipelineError(
    'ERR_JOURNAL_MISMATCH',
    `${path} has an interrupted ${journal.header.operation} job whose journal already fixed the new key's lockers, and this run asks for other ones: ${diffs.join('; ')}`,
  );
}

/** Lockers for a new DEK: a new KEK (made for this disk) from each provider of the disk's current fqid lockers. */
function newProviderLockers(path: string, params: EncryptionParams | null, keys: UnlockOptions): LockerSpec[] {
  if (!params) throw new DiskError('ERR_NOT_ENCRYPTED', `${path} is not encrypted`);
  const providers = Array.isArray(keys.providers) ? keys.providers : keys.providers ? Object.values(keys.providers) : [];
  const out: LockerSpec[] = [];
  for (const l of describeKeySafe(params.keySafe)) {
    if (l.kind !== 'provider') continue;
    const provider = providers.find((p) => p.id === l.providerId);
    if (provider && !out.some((o) => o.kind === 'provider' && o.provider === provider)) out.push({ kind: 'provider', provider });
  }
  if (out.length === 0) {
    throw new PipelineError(
      'ERR_INVALID_ARGUMENT',
      `give lockers for the new key of ${path}: none of its provider lockers has a provider in keys.providers (passphrase lockers cannot be re-made without the passphrase as a locker)`,
    );
  }
  return out;
}

export interface ShallowRekeyOptions {
  /** Unlocks the current KeySafe. */
  keys: UnlockOptions;
  /** Replace every locker with these. */
  lockers?: LockerSpec[];
  /** Add these lockers (e.g. a recovery passphrase, a new KEK). */
  addLockers?: LockerSpec[];
  /** Drop lockers: LockerInfo.index values (see inspectDisk), or a predicate. */
  removeLockers?: number[] | ((locker: LockerInfo) => boolean);
  cache?: KeyCache;
  /** What the disk file is (default: detected; see JobOptions.format). */
  format?: DiskFormat;
}

/**
 * Shallow rekey: the same DEK under other lockers (a new KEK or provider, a recovery passphrase
 * added or removed). Only the KeySafe line changes; data is untouched. The descriptor is replaced
 * atomically (text) or journaled (embedded in a monolithicSparse file).
 */
export async function shallowRekey(path: string, options: ShallowRekeyOptions): Promise<JobResult> {
  const p = await realDiskPath(checkPath(path, 'path'));
  if (options === null || typeof options !== 'object') throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const { keys, lockers, addLockers, removeLockers, cache } = options;
  const format = checkFormat(options.format, 'format');
  if (keys === null || typeof keys !== 'object')
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? }', 'keys', keys));
  if (lockers === undefined && addLockers === undefined && removeLockers === undefined) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', 'give lockers (replace all), addLockers or removeLockers');
  }
  if (lockers !== undefined) checkLockers(lockers);
  const started = performance.now();
  return withDiskLock(p, 'rekey-shallow', format, async () => {
    const pending = await Journal.open(p);
    if (pending) {
      await pending.close();
      throw new DiskError('ERR_INTERRUPTED_JOB', `${p} has an unfinished ${pending.header.operation} job; resume it first`);
    }
    const stored = await openVmdk(p, { readOnly: true, allowEncrypted: true, ...formatOption(format) });
    let header: JournalHeader;
    let journalDek: Buffer | undefined;
    const madeKeys: KeyRef[] = [];
    try {
      const enc = encryptionOf(stored);
      if (!enc) throw new DiskError('ERR_NOT_ENCRYPTED', `${p} is not encrypted`);
      if (enc.job !== undefined) throw new DiskError('ERR_INTERRUPTED_JOB', `${p} has an unfinished ${enc.job} job; resume it first`);
      const params = enc.params;
      const dek = await unlockDek(params, stored.capacity, keys, p);
      let keySafe: string | undefined;
      journalDek = Buffer.from(dek); // a shallow rekey keeps the DEK: it keys the journal's MAC
      try {
        // A re-seal (unsafe text) reuses the KEKs the previous try made instead of making new ones.
        let replaceWith = lockers;
        let add = addLockers;
        for (let i = 0; i < 64 && keySafe === undefined; i++) {
          let text: string;
          const created: KeyRef[] = [];
          const onKeyCreated = (ref: KeyRef): void => {
            created.push(ref);
            madeKeys.push(ref);
          };
          if (replaceWith !== undefined) {
            text = await sealDek(dek, {
              cipher: params.cipher,
              lockers: replaceWith,
              diskId: params.diskId,
              onKeyCreated,
              ...((cache ?? keys.cache) ? { cache: cache ?? keys.cache } : {}),
            });
            replaceWith = reuseCreatedKeys(replaceWith, created);
          } else {
            const remove =
              typeof removeLockers === 'function'
                ? removeLockers
                : Array.isArray(removeLockers)
                  ? (l: LockerInfo) => removeLockers.includes(l.index)
                  : undefined;
            text = await rewrapKeySafe(params.keySafe, {
              unlock: keys,
              diskId: params.diskId,
              onKeyCreated,
              ...(add ? { add } : {}),
              ...(remove ? { remove } : {}),
              ...(cache ? { cache } : {}),
            });
            if (add) add = reuseCreatedKeys(add, created);
          }
          if (text.length > MAX_VALUE_LENGTH) {
            throw new DiskError(
              'ERR_ENCRYPTION_METADATA',
              `the new KeySafe of ${p} is ${text.length} characters, more than a descriptor value may hold (${MAX_VALUE_LENGTH}); use fewer lockers`,
            );
          }
          if (unsafeValueReason(text) === null) keySafe = text;
        }
      } finally {
        dek.fill(0);
      }
      if (keySafe === undefined) throw new DiskError('ERR_ENCRYPTION_METADATA', `the new KeySafe of ${p} cannot be written into its descriptor`);
      const to: EncryptionParams = { ...params, keySafe };
      const base = stored.descriptor as Descriptor;
      const final = withLines(base, to, undefined);
      // A chain: every layer gets the new KeySafe (they share the DEK; each keeps its own lines, so
      // each authenticator stays valid), in the same journaled job.
      const layers = (stored instanceof ChainDisk ? stored.layers().slice(1) : []).map((l) => {
        const lp = encryptionOf(l)?.params;
        if (!lp || !l.descriptor) throw new DiskError('ERR_WRONG_PARENT', `${l.path}, a layer of the chain ${p}, is not encrypted`);
        return { path: relative(dirname(p), l.path), final: b64(withLines(l.descriptor, { ...lp, keySafe }, undefined)) };
      });
      header = {
        version: 2,
        operation: 'rekey-shallow',
        disk: basename(p),
        capacity: stored.capacity,
        chunkSize: 4096,
        align: 4096,
        from: params,
        to,
        started: new Date().toISOString(),
        descriptor: { during: b64(base), final: b64(final) },
        ...(layers.length ? { layers } : {}),
      };
    } catch (err) {
      journalDek?.fill(0);
      // Nothing was written: the KEKs made for the new lockers lock nothing.
      await discardJobKeys(madeKeys, jobProviders(keys, [...(lockers ?? []), ...(addLockers ?? [])]));
      throw err;
    } finally {
      await stored.close();
    }
    let journal: Journal;
    try {
      const loc = await locateDescriptor(p);
      if (loc.kind === 'text' && !header.layers) {
        await writeDescriptor(loc, Buffer.from(header.descriptor.final, 'base64')); // atomic by rename
        return result(header, p, 0, started, false);
      }
      journal = await Journal.create(p, header, journalDek!);
    } finally {
      journalDek!.fill(0);
    }
    return runJournal(p, journal, { from: keys, to: keys }, {}, false);
  });
}

export interface ResumeOptions extends JobOptions {
  /** Unlocks the keys named in the journal (the old one of a rekey, and the new one unless newKeys is given). */
  keys?: UnlockOptions;
  /** Unlocks the new key of an interrupted deep rekey when `keys` cannot (e.g. another passphrase). */
  newKeys?: UnlockOptions;
  cache?: KeyCache;
  /** A finished deep rekey retires the old KEKs made for the disk alone, as deepRekey does (default: true). */
  retireOldKeys?: boolean;
  /** …or destroys them (default: false). */
  destroyOldKeys?: boolean;
}

/**
 * Finish whatever was interrupted on `path`: an in-place job (journal), a commit of a new image
 * (staging folder with commit.json), or a deep rekey's replacement. Returns null when nothing was
 * pending.
 */
export async function resumeDisk(path: string, options: ResumeOptions = {}): Promise<JobResult | null> {
  const p = await realDiskPath(checkPath(path, 'path'));
  const { keys = {}, newKeys, cache, retireOldKeys, destroyOldKeys, ...opts } = options;
  const unlock: UnlockOptions = { ...keys, ...((keys.cache ?? cache) ? { cache: keys.cache ?? cache } : {}) };
  // A snapshot commit's journal lies beside the child it merges (which it removes at the end).
  if (await isCommitJournal(p)) return commitAsJob(await commitSnapshot(p, { keys: unlock, signal: opts.signal, onProgress: opts.onProgress }));
  const unlockNew: UnlockOptions = newKeys ? { ...newKeys, ...((newKeys.cache ?? unlock.cache) ? { cache: newKeys.cache ?? unlock.cache } : {}) } : unlock;
  // A deep rekey of the chain this layer belongs to: finished (committed) or rolled back.
  const pendingBase = await pendingChainRekey(p);
  if (pendingBase) {
    const providers = jobProviders(unlock, []).concat(jobProviders(unlockNew, []));
    const settled = await settleChainRekey(p, pendingBase, unlockNew, providers);
    if (!settled) return null;
    return withRotation(p, settled.from, settled.result, providers, {
      ...(retireOldKeys !== undefined ? { retireOldKeys } : {}),
      ...(destroyOldKeys !== undefined ? { destroyOldKeys } : {}),
      cache: unlock.cache,
      format: opts.format,
    });
  }
  return withDiskLock(p, 'resume', opts.format, async (names) => {
    const journal = await Journal.open(p);
    if (journal) {
      const from = journal.header.operation === 'rekey-deep-in-place' ? (journal.header.from as EncryptionParams | null) : null;
      const done = await runJournal(p, journal, { from: unlock, to: unlockNew }, opts, true);
      const providers = jobProviders(unlock, []).concat(jobProviders(unlockNew, []));
      return withRotation(p, from, done, providers, {
        ...(retireOldKeys !== undefined ? { retireOldKeys } : {}),
        ...(destroyOldKeys !== undefined ? { destroyOldKeys } : {}),
        cache: unlock.cache,
        format: opts.format,
      });
    }
    const rolled = await cleanStaleStages(dirname(p), basename(p), names);
    // A deep rekey whose commit never started left its marker on the old descriptor: the old disk is intact.
    const stored = await openVmdk(p, { readOnly: true, allowEncrypted: true, ...formatOption(opts.format) }).catch(() => undefined);
    if (stored) {
      const job = (() => {
        try {
          return encryptionOf(stored)?.job;
        } catch {
          return undefined;
        }
      })();
      await stored.close();
      if (job === 'rekey-deep-commit') {
        await markDescriptor(p, undefined);
        return null;
      }
      if (job !== undefined)
        throw new DiskError('ERR_INTERRUPTED_JOB', `${p} is marked as in an unfinished ${job} job, but its journal ${p}.vmseal-journal is missing`);
    }
    if (rolled.length) return null;
    return null;
  });
}

export type { InPlaceOperation };

/** A resumed snapshot commit, reported as resumeDisk reports every job. */
function commitAsJob(c: CommitResult): JobResult {
  return {
    operation: 'snapshot-commit',
    input: c.removed,
    output: c.top,
    subformat: '',
    virtualSize: 0,
    bytesProcessed: c.bytesMoved,
    seconds: c.seconds,
    encrypted: c.encrypted,
    resumed: true,
  };
}

/** Bytes of holes in the FLAT extent files of the disk whose descriptor (base64) is `descriptorB64`. */
async function flatExtentHoles(path: string, descriptorB64: string): Promise<number> {
  let d: Descriptor;
  try {
    d = Descriptor.parse(Buffer.from(descriptorB64, 'base64'), { file: path });
  } catch {
    return 0;
  }
  let holes = 0;
  for (const e of d.extents) {
    if ((e.type !== 'FLAT' && e.type !== 'VMFS') || e.file === undefined) continue;
    const st = await stat(join(dirname(path), e.file)).catch(() => undefined);
    if (!st) continue;
    const needed = e.offset * 512 + e.sectors * 512;
    // blocks counts 512-byte units actually allocated; what is not allocated up to the extent's end is a hole.
    holes += Math.max(0, needed - Number(st.blocks) * 512);
  }
  return holes;
}

const OUT_OF_SPACE = new Set(['ENOSPC', 'EFBIG', 'EDQUOT']);

/** The errno code of err or of any error in its cause chain. */
function errnoOf(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && OUT_OF_SPACE.has(e.code)) return e.code;
  }
  return undefined;
}

/**
 * A journaled job that runs out of space (or into a file-size limit) midway has left the disk partly
 * transformed; the journal finishes it. Say so, and how, instead of a bare ENOSPC.
 */
function outOfSpaceIsResumable(err: unknown, operation: InPlaceOperation, path: string): unknown {
  const code = errnoOf(err);
  if (!code) return err;
  const why = code === 'EFBIG' ? 'a file-size limit (ulimit -f) was reached' : code === 'EDQUOT' ? 'the disk quota is exhausted' : 'the file system is full';
  return new PipelineError(
    'ERR_NO_SPACE',
    `${operation} of ${path} stopped because ${why} (${code}). The disk is now partly done and its journal ${journalPathOf(path)} holds what is needed to finish it: ` +
      `free space (or raise the limit), then run the same command again or \`vmseal resume ${path}\`. Do not use the disk until then.`,
    { cause: err },
  );
}

/**
 * Nothing in a journal is acted on before it is trusted. Version 2: its MACs are checked with the key
 * derived from the DEK of its target lines, unlocked with the caller's keys (a shallow rekey's DEK is
 * unchanged, so its old lines serve too). Version 1 has only checksums, which anyone who can write the
 * folder can recompute: it is trusted only when the disk's current descriptor is one of the two the
 * journal would write (so resuming it cannot change what the descriptor says), or when the caller says
 * so with trustV1Journal.
 */
async function trustJournal(path: string, journal: Journal, loc: DescriptorLocation, keys: JournalKeys, opts: JobOptions): Promise<void> {
  const h = journal.header;
  if (journal.version === 1) {
    if (opts.trustV1Journal) return;
    const current = await readDescriptorBytes(loc).catch(() => undefined);
    const now = current === undefined ? undefined : withoutCid(current);
    const matches =
      now !== undefined && (now === withoutCid(Buffer.from(h.descriptor.during, 'base64')) || now === withoutCid(Buffer.from(h.descriptor.final, 'base64')));
    if (matches) return;
    throw new PipelineError(
      'ERR_JOURNAL',
      `the journal ${journal.path} is version 1 (checksummed, not authenticated) and the descriptor of ${path} is not the one it was written with; ` +
        'it could have been forged by anyone who can write the folder. If you know that this journal is the one vmseal left, run the command again with --trust-v1-journal.',
    );
  }
  if (journal.authenticated) return;
  let dek: Buffer | undefined;
  try {
    dek = await unlockDek(h.to as EncryptionParams, h.capacity, keys.to, `${path} (the key in its journal)`);
  } catch (err) {
    if (h.operation !== 'rekey-shallow' || !h.from) throw err;
    dek = await unlockDek(h.from as EncryptionParams, h.capacity, keys.from, `${path} (the key in its journal)`);
  }
  try {
    journal.authenticate(dek);
  } finally {
    dek.fill(0);
  }
}
