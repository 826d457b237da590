/** `backup list`, `backup verify` and `backup prune`: reading, checking and thinning a repository. */
import { expected } from '../errors.js';
import { BackupError } from './errors.js';
import type { PointManifest } from './manifest.js';
import { readPoint, readPoints, resolvePoint } from './points.js';
import { CHUNK_SIZE, openRepository } from './repository.js';
import { pointsToPrune, type PruneRules } from './prune-select.js';
import { entryOf, pointEntries, pointIndexLeftovers, savePointIndex, summaryOf } from './point-index.js';
import type { PointSummary } from './point-summary.js';

function waitOf(options: { lockWaitMs?: number }): number {
  const w = options.lockWaitMs ?? 0;
  if (!Number.isSafeInteger(w) || w < 0) throw new BackupError('ERR_INVALID_ARGUMENT', expected('a non-negative integer', 'options.lockWaitMs', w));
  return w;
}

export type { PointSummary } from './point-summary.js';

/**
 * Every point of the repository, oldest first, from the point index (point-index.ts): only the
 * manifests it lacks are read (a damaged one of those throws ERR_BACKUP_MANIFEST: run verify, which
 * reads them all).
 */
export async function listBackups(repoPath: string): Promise<{ repository: string; points: PointSummary[] }> {
  const repo = await openRepository(repoPath);
  // No lock: manifests appear and disappear whole (rename, unlink), and a point pruned meanwhile is skipped.
  return { repository: repo.id, points: (await pointEntries(repo)).map(summaryOf) };
}

export interface VerifyProblem {
  /** The point concerned, if any (a damaged manifest; a chunk it names). */
  point?: string;
  /** The chunk concerned, if any. */
  chunk?: string;
  problem: string;
}

export interface VerifyBackupResult {
  ok: boolean;
  points: number;
  /** Chunks hashed. */
  chunks: number;
  bytes: number;
  problems: VerifyProblem[];
}

const PARALLEL = 4;

/**
 * Check a repository: every manifest parses and belongs to it, every chunk a point names exists,
 * has the length the point expects and hashes to its name. Without `point`, every stored chunk is
 * rehashed too (also those no point names); with it, only that point's manifest and chunks.
 */
export async function verifyBackup(repoPath: string, point?: string, options: { lockWaitMs?: number } = {}): Promise<VerifyBackupResult> {
  const repo = await openRepository(repoPath);
  const lock = await repo.lock('shared', 'verify', waitOf(options));
  try {
    const problems: VerifyProblem[] = [];
    const manifests: PointManifest[] = [];
    if (point !== undefined) manifests.push(await resolvePoint(repo, point));
    else {
      for (const id of await repo.pointIds()) {
        try {
          manifests.push(await readPoint(repo, id));
        } catch (err) {
          if (err instanceof BackupError && err.code === 'ERR_BACKUP_MANIFEST') problems.push({ point: id, problem: err.message });
          else throw err;
        }
      }
    }
    // hash → expected length and the first point naming it
    const expected = new Map<string, { length: number; point: string }>();
    for (const m of manifests) {
      for (const l of m.layers) {
        for (const [off, hash] of l.chunks) {
          const length = Math.min(CHUNK_SIZE, l.capacity - off);
          const prev = expected.get(hash);
          if (prev && prev.length !== length)
            problems.push({ point: m.id, chunk: hash, problem: `chunk ${hash} is named with lengths ${prev.length} and ${length}` });
          else if (!prev) expected.set(hash, { length, point: m.id });
        }
      }
    }
    const toCheck = new Set(expected.keys());
    if (point === undefined) for (const h of (await repo.scanChunks()).hashes) toCheck.add(h);
    const queue = [...toCheck];
    let bytes = 0;
    const worker = async (): Promise<void> => {
      while (queue.length > 0) {
        const hash = queue.pop()!;
        const want = expected.get(hash);
        const got = await repo.hashChunkFile(hash);
        if (got === null) {
          problems.push({ point: want?.point, chunk: hash, problem: `chunk ${hash} is missing` });
          continue;
        }
        bytes += got.size;
        if (got.sha256 !== hash)
          problems.push({ point: want?.point, chunk: hash, problem: `chunk ${hash} does not hash to its name (its content was altered)` });
        else if (want && got.size !== want.length)
          problems.push({ point: want.point, chunk: hash, problem: `chunk ${hash} has ${got.size} bytes, not ${want.length}` });
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    return { ok: problems.length === 0, points: manifests.length, chunks: toCheck.size, bytes, problems };
  } finally {
    lock.release();
  }
}

export interface PruneBackupOptions {
  /** Points to keep in each history, the newest ones (at least 1). */
  keepLast?: number;
  /**
   * Remove the points of each history made under an older disk key (DEK): those whose disk id is not
   * that of the history's newest encrypted point (a deep rekey changes it). Plain points stay.
   */
  beforeRekey?: boolean;
  /** Remove every plain point (its chunks are plaintext). */
  plain?: boolean;
  /** Wait this long for the exclusive repository lock (default: `0`). */
  lockWaitMs?: number;
}

export interface PruneBackupResult {
  removedPoints: string[];
  keptPoints: number;
  removedChunks: number;
  freedBytes: number;
}

function checkPruneRules(options: PruneBackupOptions): PruneRules {
  const bad = (what: string, name: string, value: unknown): BackupError => new BackupError('ERR_INVALID_ARGUMENT', expected(what, name, value));
  const { keepLast, beforeRekey, plain } = options;
  if (keepLast !== undefined && (!Number.isSafeInteger(keepLast) || keepLast < 1)) throw bad('a positive integer', 'options.keepLast', keepLast);
  if (beforeRekey !== undefined && typeof beforeRekey !== 'boolean') throw bad('a boolean', 'options.beforeRekey', beforeRekey);
  if (plain !== undefined && typeof plain !== 'boolean') throw bad('a boolean', 'options.plain', plain);
  if (keepLast === undefined && beforeRekey !== true && plain !== true) {
    throw new BackupError('ERR_INVALID_ARGUMENT', 'prune needs a rule: keepLast (--keep-last N), beforeRekey (--before-rekey) or plain (--plain)');
  }
  return { keepLast, beforeRekey, plain };
}

/**
 * Delete the points the rules pick (prune-select.ts: keepLast, beforeRekey, plain; several rules
 * remove the union), then every chunk no remaining point names (and temp files of killed writers).
 * Under the exclusive repository lock, so no backup runs meanwhile (a running one may count on a
 * chunk it found present). Crash-safe by its order: manifests are deleted (and their folder synced)
 * before any chunk, so a crash leaves at worst unreferenced chunks, which the next prune deletes. A
 * damaged manifest stops it (its chunks are unknown, so none could be deleted safely): verify names it.
 */
export async function pruneBackup(repoPath: string, options: PruneBackupOptions): Promise<PruneBackupResult> {
  if (options === null || typeof options !== 'object') throw new BackupError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const rules = checkPruneRules(options);
  const repo = await openRepository(repoPath);
  const lock = await repo.lock('exclusive', 'prune', waitOf(options));
  try {
    const points = await readPoints(repo);
    const chosen = pointsToPrune(points, rules);
    const removed = points.filter((p) => chosen.has(p.id)).map((p) => p.id);
    const kept = points.filter((p) => !chosen.has(p.id));
    for (const id of removed) await repo.removePoint(id);
    if (removed.length > 0) await repo.syncPoints();
    // The point index is rebuilt from the manifests just read (a prune killed before this leaves
    // entries without manifests, which readers drop: point-index.ts).
    await savePointIndex(repo, kept.map(entryOf));
    const referenced = new Set<string>();
    for (const p of kept) for (const l of p.layers) for (const [, h] of l.chunks) referenced.add(h);
    const { hashes, leftovers } = await repo.scanChunks();
    let removedChunks = 0;
    let freedBytes = 0;
    for (const h of hashes) {
      if (referenced.has(h)) continue;
      freedBytes += await repo.chunkFileSize(h);
      await repo.removeChunk(h);
      removedChunks++;
    }
    // Under the exclusive lock nobody writes the index: a temp file beside it is a killed writer's.
    await repo.removeFiles([...leftovers, ...(await pointIndexLeftovers(repo))]);
    if (removedChunks > 0 || leftovers.length > 0) await repo.syncChunkFolders();
    return { removedPoints: removed.sort(), keptPoints: kept.length, removedChunks, freedBytes };
  } finally {
    lock.release();
  }
}
