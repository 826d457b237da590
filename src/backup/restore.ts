/**
 * `backup restore REPO POINT OUT`: a new disk with the point's ciphertext view and its descriptor
 * (same DEK, KeySafe, disk id and authenticator, so the same keys open it), built aside and moved
 * into place only when complete.
 *
 * The disk is created in a staging folder `<folder of OUT>/.vmseal-restore-<random>/` under OUT's
 * file name (so its descriptor names its extents as OUT's will), with OUT's subformat, capacity,
 * grain and extent sizes and every descriptor line of the point but the extent lines; then each
 * chunk is read, its SHA-256 checked against its name, and its non-zero blocks written. Holes stay
 * holes: an unallocated sparse grain reads as zeros in the ciphertext view, so a block of a whole
 * grain of zeros is left unallocated (an allocated grain holds ciphertext over its whole length,
 * docs/format.md), and zero blocks of flat extents stay host holes. Last, the files are moved next
 * to OUT without replacing anything (link, then unlink the staged name), extents first and the
 * descriptor last, and the folder is fsynced. The staging folder's name is held while the restore
 * lives; one left by a killed restore is removed by the next restore into the folder
 * (restore-staging.ts).
 *
 * The new descriptor gets the lineage line (lineage.ts) so that OUT's backups continue from the
 * point. With `rewrapTo` or `newDek`, the staged disk is rekeyed (restore-keys.ts) before it is moved.
 */
import { link, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fsyncDir } from '../util/atomic-file.js';
import { createDisk, Descriptor, openDisk, plannedDiskFiles, type CreateSubformat, type VirtualDisk } from '../vmdk/index.js';
import { describeKeySafe, type KeyCache, type LockerSpec } from '../keys/index.js';
import { NameReservations } from '../pipeline/lock.js';
import { abortError } from '../pipeline/errors.js';
import { expected } from '../errors.js';
import { runWorkers } from '../util/run-workers.js';
import { BackupError } from './errors.js';
import type { PointLayer, PointManifest } from './manifest.js';
import { resolvePoint } from './points.js';
import { newRestoredFrom, RESTORED_FROM_KEY } from './lineage.js';
import { rekeyRestored, type RestoreKeys, type RestoreRekey } from './restore-keys.js';
import { cleanStaleRestoreStages, makeRestoreStage, removeRestoreStage } from './restore-staging.js';
import { CHUNK_SIZE, openRepository, type Repository } from './repository.js';
import { FLAT_BLOCK, putChunkKeepingHoles } from './chunk-blocks.js';
import { openFlatFiles } from './flat-files.js';
import { chunkRuns } from './chunk-runs.js';
import { restoreRun } from './restore-chunks.js';
import { NATIVE_IN_FLIGHT, nativeBackup } from '../util/native-backup.js';

export interface RestoreBackupOptions {
  /** With point `latest` or a name: look only at this history's points. */
  history?: string;
  /** Wait this long for a repository lock held exclusively by a prune (default: `0`). */
  lockWaitMs?: number;
  signal?: AbortSignal;
  /**
   * Restore at another site: seal the DEK for these lockers instead of the point's (a shallow rekey
   * of the restored disk; its data stays the point's ciphertext). Needs `keys`.
   */
  rewrapTo?: LockerSpec[];
  /**
   * Re-encrypt the restored disk under a new DEK (a deep rekey), sealed for `rewrapTo` if given,
   * else for a new KEK of each provider the point's lockers name (default: `false`). Needs `keys`.
   */
  newDek?: boolean;
  /** Unlocks the point's KeySafe, for `rewrapTo` and `newDek`: unlock options, or a function given the KeySafe text. */
  keys?: RestoreKeys;
  cache?: KeyCache;
}

export interface RestoreBackupResult {
  point: string;
  /** The restored disk (its descriptor, or only file). */
  path: string;
  /** Every file of the restored disk. */
  files: string[];
  /** Chunks written (each verified by hash first). */
  chunks: number;
  bytesWritten: number;
  /** The restored disk's lockers were replaced (`rewrapTo`). */
  rewrapped: boolean;
  /** The restored disk was re-encrypted under a new DEK (`newDek`). */
  newDek: boolean;
}

const PARALLEL = 4;
/** Lines createDisk writes itself: the point's values are set over them after creation. */
const TEMPLATE_KEYS = new Set(['version', 'CID', 'parentCID', 'createType']);

function arg(what: string, name: string, value: unknown): BackupError {
  return new BackupError('ERR_INVALID_ARGUMENT', expected(what, name, value));
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return false;
      throw err;
    },
  );
}

/** Restore point `point` (an id, a name, or `latest`) of the repository at `repoPath` as the new disk `outPath`. */
export async function restoreBackup(repoPath: string, point: string, outPath: string, options: RestoreBackupOptions = {}): Promise<RestoreBackupResult> {
  if (typeof point !== 'string' || point === '') throw arg('a point id, name or `latest`', 'point', point);
  if (typeof outPath !== 'string' || outPath === '' || outPath.includes('\0')) throw arg('a file path', 'out', outPath);
  if (options === null || typeof options !== 'object') throw arg('an object', 'options', options);
  const waitMs = options.lockWaitMs ?? 0;
  if (!Number.isSafeInteger(waitMs) || waitMs < 0) throw arg('a non-negative integer', 'options.lockWaitMs', waitMs);
  const rekey = checkRekey(options);
  const repo = await openRepository(repoPath);
  const lock = await repo.lock('shared', 'restore', waitMs);
  try {
    const m = await resolvePoint(repo, point, options.history);
    if (m.layers.length !== 1) {
      throw new BackupError(
        'ERR_BACKUP_UNSUPPORTED',
        `point ${m.id} holds a snapshot chain of ${m.layers.length} layers; this vmseal restores single-layer points only`,
      );
    }
    if (rekey && m.plain) {
      throw new BackupError(
        'ERR_BACKUP_PLAIN',
        `point ${m.id} is of a plain disk: it has no key to rewrap or replace; restore it without rewrapTo/newDek (--rewrap-to, --new-dek), then encrypt it`,
      );
    }
    if (rekey?.newDek && rekey.rewrapTo === undefined && !hasProviderLocker(m.layers[0]!)) {
      throw new BackupError(
        'ERR_INVALID_ARGUMENT',
        `point ${m.id} is locked by a passphrase only, so a new DEK has no key provider to be sealed for: give its lockers with rewrapTo (--rewrap-to local|kmip)`,
      );
    }
    return await restoreLayer(repo, m, m.layers[0]!, resolve(outPath), rekey, options.signal);
  } finally {
    lock.release();
  }
}

/** Whether the layer's KeySafe has a key-provider locker (a new DEK's default lockers come from those). */
function hasProviderLocker(layer: PointLayer): boolean {
  const keySafe = layer.descriptor === null ? undefined : Descriptor.parse(layer.descriptor).get('encryption.keySafe');
  try {
    return keySafe !== undefined && describeKeySafe(keySafe).some((l) => l.kind === 'provider');
  } catch {
    return true; // a damaged KeySafe: the rekey reports it with its own error
  }
}

/** The rekey a restore asks for (rewrapTo, newDek), checked; undefined for none. */
function checkRekey(o: RestoreBackupOptions): RestoreRekey | undefined {
  const newDek = o.newDek ?? false;
  if (typeof newDek !== 'boolean') throw arg('a boolean', 'options.newDek', newDek);
  if (o.rewrapTo !== undefined && (!Array.isArray(o.rewrapTo) || o.rewrapTo.length === 0))
    throw arg('a non-empty array of lockers', 'options.rewrapTo', o.rewrapTo);
  if (!newDek && o.rewrapTo === undefined) return undefined;
  if (o.keys === null || (typeof o.keys !== 'object' && typeof o.keys !== 'function')) {
    throw arg(
      `unlock options { passphrase?, providers?, cache? } (or a function of the point's KeySafe) to unlock the point's key for ${newDek ? 'newDek' : 'rewrapTo'}`,
      'options.keys',
      o.keys,
    );
  }
  return { keys: o.keys, rewrapTo: o.rewrapTo, newDek, cache: o.cache, signal: o.signal };
}

async function restoreLayer(
  repo: Repository,
  m: PointManifest,
  layer: PointLayer,
  out: string,
  rekey: RestoreRekey | undefined,
  signal: AbortSignal | undefined,
): Promise<RestoreBackupResult> {
  const subformat = layer.subformat as CreateSubformat;
  const sizes = { capacity: layer.capacity, subformat, ...(layer.extentSize !== null ? { maxExtentSize: layer.extentSize } : {}) };
  const finals = plannedDiskFiles(out, sizes);
  for (const f of finals)
    if (await exists(f)) throw new BackupError('ERR_OUTPUT_EXISTS', `${f} exists; restore never replaces a file (choose another output name, or remove it)`);
  const names = new NameReservations();
  let staging: string | undefined;
  const moved: string[] = [];
  try {
    await names.reserve(finals, 'exclusive');
    // Staging folders of restores killed earlier (their owner's lock is gone) go first.
    await cleanStaleRestoreStages(dirname(out), names);
    staging = await makeRestoreStage(dirname(out), names);
    const staged = join(staging, basename(out));
    const saved = layer.descriptor === null ? undefined : Descriptor.parse(layer.descriptor);
    const disk = await createDisk(staged, {
      ...sizes,
      ...(layer.grainSize !== null ? { grainSize: layer.grainSize } : {}),
      descriptorLines: saved ? saved.entries().filter(([k]) => !TEMPLATE_KEYS.has(k) && !k.startsWith('ddb.')) : [],
    });
    const lineage = newRestoredFrom(repo.id, m.id);
    let written: { chunks: number; bytes: number };
    try {
      if (saved) await disk.updateDescriptor((d) => copyDescriptorLines(saved, d, lineage));
      written = await writeChunks(repo, disk, layer, signal);
      await disk.flush();
    } finally {
      await disk.close();
    }
    if (rekey && saved) {
      await rekeyRestored(staged, saved.get('encryption.keySafe') ?? '', rekey);
      // A deep rekey writes a new descriptor: the point's identity lines and the lineage go back on it.
      if (rekey.newDek) await stampDescriptor(staged, saved, lineage);
    }
    const stagedFiles = plannedDiskFiles(staged, sizes);
    // Extents first, the descriptor (first in the list) last: OUT appears only with its data in place.
    for (let i = stagedFiles.length - 1; i >= 0; i--) {
      await moveNoReplace(stagedFiles[i]!, finals[i]!);
      moved.push(finals[i]!);
    }
    await fsyncDir(dirname(out));
    return {
      point: m.id,
      path: out,
      files: finals,
      chunks: written.chunks,
      bytesWritten: written.bytes,
      rewrapped: rekey?.rewrapTo !== undefined,
      newDek: rekey?.newDek ?? false,
    };
  } catch (err) {
    for (const f of moved) await unlink(f).catch(() => undefined);
    throw err;
  } finally {
    if (staging !== undefined) await removeRestoreStage(staging, names);
    names.close();
  }
}

/**
 * Give the new descriptor the point's header and disk-database lines (the extent lines stay OUT's;
 * ddb.uuid among them, so backups of OUT continue the point's history), and the lineage line that
 * makes them continue from this point (lineage.ts).
 */
function copyDescriptorLines(saved: Descriptor, d: Descriptor, lineage: string): void {
  for (const [k, v] of saved.entries()) if (k === 'CID' || k.startsWith('ddb.')) d.set(k, v);
  for (const [k] of d.entries()) if (k.startsWith('ddb.') && !saved.has(k)) d.delete(k);
  d.set(RESTORED_FROM_KEY, lineage);
}

/** Put the point's lines back on a staged disk whose descriptor a job rewrote. */
async function stampDescriptor(staged: string, saved: Descriptor, lineage: string): Promise<void> {
  const disk = await openDisk(staged, { allowEncrypted: true });
  try {
    await disk.updateDescriptor((d) => copyDescriptorLines(saved, d, lineage));
  } finally {
    await disk.close();
  }
}

async function moveNoReplace(from: string, to: string): Promise<void> {
  try {
    await link(from, to);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new BackupError('ERR_OUTPUT_EXISTS', `${to} appeared while the restore ran; it was left alone`, { cause: err });
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS') throw err;
    if (await exists(to)) throw new BackupError('ERR_OUTPUT_EXISTS', `${to} appeared while the restore ran; it was left alone`);
    await rename(from, to); // no hard links here: a rename, after the check above
    return;
  }
  await unlink(from);
}

/**
 * Write every chunk of `layer` into `disk`, each checked by hash before any of it is written: runs
 * of chunks that lie in one file of a flat disk as native jobs (restore-chunks.ts), the others
 * through the VMDK layer.
 */
async function writeChunks(
  repo: Repository,
  disk: VirtualDisk,
  layer: PointLayer,
  signal: AbortSignal | undefined,
): Promise<{ chunks: number; bytes: number }> {
  const block = layer.grainSize ?? FLAT_BLOCK;
  const flat = layer.grainSize === null && process.env.VMSEAL_BACKUP_CHUNK_THREADS !== '0' ? await openFlatFiles(disk, 'write') : null;
  const native = flat ? nativeBackup() : null;
  let bytes = 0;
  const batches = chunkRuns(layer.chunks[Symbol.iterator](), ([off]) => off, layer.capacity, flat);
  // The first failure (a bad chunk) stops every worker before the staged disk is closed and removed.
  try {
    await runWorkers(native ? NATIVE_IN_FLIGHT : PARALLEL, async (stopped) => {
      const buf = Buffer.allocUnsafe(CHUNK_SIZE);
      for (let n = await batches.next(); !n.done && !stopped(); n = await batches.next()) {
        if (signal?.aborted) throw abortError(signal, `the restore to ${disk.path}`);
        const run = n.value;
        if (native && run.fd !== null) {
          const put = await restoreRun(native, repo, run);
          bytes += put;
          continue;
        }
        for (const [off, hash] of run.chunks) {
          const data = buf.subarray(0, Math.min(CHUNK_SIZE, layer.capacity - off));
          await repo.readChunk(hash, data);
          const put = await putChunkKeepingHoles(disk, off, data, block, 'skip'); // a new disk: its holes read as zeros
          bytes += put; // (not `bytes += await`: that would add to the value read before the other workers' writes)
        }
      }
    });
  } finally {
    await flat?.close();
  }
  return { chunks: layer.chunks.length, bytes };
}
