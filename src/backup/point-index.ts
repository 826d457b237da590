/**
 * The index of a repository's points, `REPO/points-index.json`: for each point, the fields that choose
 * a point without reading its manifest — its history, its name and its lineage line (lineage.ts) —
 * and what `backup list` shows of it (point-summary.ts), so that `backup create` finds its parent,
 * `latest` or a name resolves and `list` lists by parsing one small file instead of every manifest
 * (each lists a chunk per MiB of the disk: 2,048 entries for 2 GiB).
 *
 *     {"format":"vmseal-backup-index","version":2,"repository":"<repository id>",
 *      "points":[["<point id>","<history>",<name or null>,"<lineage line, or ''>",
 *                 {"parent":<id or null>,"time":"<ISO>","plain":<bool>,"source":"<path>","capacity":<bytes>,
 *                  "subformat":"<top layer's>","chunks":<n>,"newChunks":<n>,"chainLayers":<n>}], …]}
 *
 * A CACHE, never the source of truth. Each use lists `points/` (one directory read, no manifest
 * read) and trusts an entry only for a manifest that is there: a point missing from the index (a
 * backup killed between its manifest and the index, a vmseal that predates the index) is read from
 * its manifest; an entry without a manifest (a prune killed before it rewrote the index) is dropped;
 * a missing, damaged, foreign or other-version file (version 1 lacked the summaries) is rebuilt from
 * the manifests. The fields it keeps never change once a manifest is written (a rewrap rewrites only
 * the KeySafe), so an entry of a manifest that is there is the manifest's. Whenever the listing and
 * the file disagree, the corrected index is written back.
 *
 * Every write happens under the index lock (`REPO/points-index.lock`, util/lock.ts, exclusive) and
 * from what is read under it: the listing and the file read again, the writer's own new entry added.
 * Concurrent backups (which share the repository lock) thus each add their point to what the other
 * wrote instead of replacing it; a reader that finds the index stale and the lock taken leaves the
 * repair to the holder. Writes replace the file whole (temp file, rename) without fsync: a crash may
 * leave the old file, the new one or (on some file systems) an empty one, and each is handled above.
 */
import { constants } from 'node:fs';
import { open, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isTempNameOf, tempName } from '../util/atomic-file.js';
import { acquireFileLock } from '../util/lock.js';
import { Descriptor } from '../vmdk/index.js';
import { BackupError } from './errors.js';
import { BACKUP_SUBFORMATS, HISTORY_RE, POINT_NAME_RE, parseManifest, type PointManifest } from './manifest.js';
import { POINT_ID_RE, type Repository } from './repository.js';
import { RESTORED_FROM_KEY } from './lineage.js';
import { summarize, type PointSummary } from './point-summary.js';

export const POINT_INDEX_FILE = 'points-index.json';
export const POINT_INDEX_FORMAT = 'vmseal-backup-index';
export const POINT_INDEX_VERSION = 2;
/** The index lock's record file: every index write is made under it, exclusive. */
export const POINT_INDEX_LOCK = 'points-index.lock';
/** Largest index read (about 150,000 points); a larger file is rebuilt from the manifests. */
const MAX_INDEX_BYTES = 64 << 20;
/** Longest lineage line kept (vmseal writes 59 characters); a point with a longer one is read from its manifest. */
const MAX_LINE = 1024;
/** Longest source path kept (Linux's PATH_MAX); a point with a longer one is read from its manifest. */
const MAX_SOURCE = 4096;
/**
 * How long a backup waits for the index lock to add its point. Holders only list `points/`, read the
 * index (and the manifests it lacks) and write it: milliseconds, unless the index was lost and is
 * being rebuilt from every manifest. After the wait the point is left to the next reader to index.
 */
const ADD_WAIT_MS = 30_000;

/** What the index keeps of a point: what list shows of it, and its lineage line. */
export interface PointEntry extends PointSummary {
  /** The top layer's `ddb.vmseal.restoredFrom` value, '' when it has none. */
  line: string;
}

/** The lineage line of a point's top layer ('' when it has none, or no descriptor). */
function lineOf(m: PointManifest): string {
  const text = m.layers[m.layers.length - 1]?.descriptor;
  if (!text) return '';
  try {
    return Descriptor.parse(text).get(RESTORED_FROM_KEY) ?? '';
  } catch {
    return '';
  }
}

export function entryOf(m: PointManifest): PointEntry {
  return { ...summarize(m), line: lineOf(m) };
}

/** The summary of an entry, its fields in summarize()'s order (what `backup list --json` prints). */
export function summaryOf(e: PointEntry): PointSummary {
  return {
    id: e.id,
    name: e.name,
    history: e.history,
    parent: e.parent,
    time: e.time,
    plain: e.plain,
    source: e.source,
    capacity: e.capacity,
    subformat: e.subformat,
    chunks: e.chunks,
    newChunks: e.newChunks,
    chainLayers: e.chainLayers,
  };
}

export function pointIndexPath(repo: Repository): string {
  return join(repo.path, POINT_INDEX_FILE);
}

const isCount = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;

/** The fields of an entry's fifth element (the summary less id, name and history), checked. */
type Rest = Omit<PointSummary, 'id' | 'name' | 'history'>;

function isRest(r: unknown): r is Rest {
  if (r === null || typeof r !== 'object' || Array.isArray(r)) return false;
  const o = r as Record<string, unknown>;
  return (
    (o.parent === null || (typeof o.parent === 'string' && POINT_ID_RE.test(o.parent))) &&
    typeof o.time === 'string' &&
    !Number.isNaN(Date.parse(o.time)) &&
    typeof o.plain === 'boolean' &&
    typeof o.source === 'string' &&
    o.source.length <= MAX_SOURCE &&
    isCount(o.capacity) &&
    typeof o.subformat === 'string' &&
    (BACKUP_SUBFORMATS as readonly string[]).includes(o.subformat) &&
    isCount(o.chunks) &&
    isCount(o.newChunks) &&
    isCount(o.chainLayers)
  );
}

function isEntry(e: unknown): e is [string, string, string | null, string, Rest] {
  return (
    Array.isArray(e) &&
    e.length === 5 &&
    typeof e[0] === 'string' &&
    POINT_ID_RE.test(e[0]) &&
    typeof e[1] === 'string' &&
    HISTORY_RE.test(e[1]) &&
    (e[2] === null || (typeof e[2] === 'string' && POINT_NAME_RE.test(e[2]))) &&
    typeof e[3] === 'string' &&
    e[3].length <= MAX_LINE &&
    isRest(e[4])
  );
}

/** The index file's entries by id, or null when it is absent, damaged, too large or another repository's. */
async function readIndexFile(repo: Repository): Promise<Map<string, PointEntry> | null> {
  let text: string;
  try {
    // Sized before it is read (a huge file is not loaded to be refused); O_NONBLOCK: a FIFO put
    // in its place does not hang the open, and is no regular file.
    const h = await open(pointIndexPath(repo), constants.O_RDONLY | constants.O_NONBLOCK);
    try {
      const st = await h.stat();
      if (!st.isFile() || st.size > MAX_INDEX_BYTES) return null;
      text = await h.readFile('utf8');
    } finally {
      await h.close();
    }
  } catch {
    return null;
  }
  let f: unknown;
  try {
    f = JSON.parse(text);
  } catch {
    return null;
  }
  const o = f as Record<string, unknown> | null;
  if (o === null || typeof o !== 'object' || o.format !== POINT_INDEX_FORMAT || o.version !== POINT_INDEX_VERSION || o.repository !== repo.id) return null;
  if (!Array.isArray(o.points)) return null;
  const out = new Map<string, PointEntry>();
  for (const e of o.points as unknown[]) {
    if (!isEntry(e)) return null; // a damaged file is rebuilt whole
    const r = e[4];
    out.set(e[0], {
      id: e[0],
      name: e[2],
      history: e[1],
      parent: r.parent,
      time: r.time,
      plain: r.plain,
      source: r.source,
      capacity: r.capacity,
      subformat: r.subformat,
      chunks: r.chunks,
      newChunks: r.newChunks,
      chainLayers: r.chainLayers,
      line: e[3],
    });
  }
  return out;
}

/** Replace the index with `entries` (oldest first). No fsync: see above. Callers hold the index lock. */
async function writePointIndex(repo: Repository, entries: readonly PointEntry[]): Promise<void> {
  const file = pointIndexPath(repo);
  const body = {
    format: POINT_INDEX_FORMAT,
    version: POINT_INDEX_VERSION,
    repository: repo.id,
    points: entries
      .filter((e) => e.line.length <= MAX_LINE && e.source.length <= MAX_SOURCE)
      .map((e) => [
        e.id,
        e.history,
        e.name,
        e.line,
        {
          parent: e.parent,
          time: e.time,
          plain: e.plain,
          source: e.source,
          capacity: e.capacity,
          subformat: e.subformat,
          chunks: e.chunks,
          newChunks: e.newChunks,
          chainLayers: e.chainLayers,
        },
      ]),
  };
  const tmp = tempName(file);
  try {
    await writeFile(tmp, `${JSON.stringify(body)}\n`, { mode: 0o600, flag: 'wx' });
    await rename(tmp, file);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

/** Leftover temp files of index writers that were killed (`points-index.json.tmp-<pid>-<12 hex>`), as paths. */
export async function pointIndexLeftovers(repo: Repository): Promise<string[]> {
  const file = pointIndexPath(repo);
  return (await readdir(repo.path)).filter((name) => isTempNameOf(file, name)).map((name) => join(repo.path, name));
}

/**
 * Run `fn` under the index lock, waiting up to `waitMs` for it; when the lock cannot be had (busy
 * past the wait, a read-only repository) `fn` is not run: the index is only a cache.
 */
async function underIndexLock(repo: Repository, waitMs: number, fn: () => Promise<void>): Promise<void> {
  let lock;
  try {
    lock = await acquireFileLock(join(repo.path, POINT_INDEX_LOCK), { mode: 'exclusive', waitMs, coversOpens: false, record: { operation: 'backup index' } });
  } catch {
    return;
  }
  try {
    await fn();
  } finally {
    lock.release();
  }
}

/**
 * Replace the index with `entries`, the repository's points as the caller read them under an
 * exclusive repository lock (prune, rewrap: no backup adds a point meanwhile). Failures are ignored.
 */
export async function savePointIndex(repo: Repository, entries: readonly PointEntry[]): Promise<void> {
  await underIndexLock(repo, ADD_WAIT_MS, () => writePointIndex(repo, entries).catch(() => undefined));
}

interface Collected {
  entries: PointEntry[];
  /** Whether the file disagrees with the listing (or is missing, damaged, foreign). */
  stale: boolean;
}

/** The listing of `points/` joined with the index file; the points it lacks from `added`, else from their manifests. */
async function collect(repo: Repository, options: { skipDamaged?: boolean }, added?: ReadonlyMap<string, PointEntry>): Promise<Collected> {
  const ids = await repo.pointIds();
  const cached = await readIndexFile(repo);
  let stale = cached === null;
  const entries: PointEntry[] = [];
  for (const id of ids) {
    let e = cached?.get(id);
    if (e === undefined) {
      stale = true;
      e = added?.get(id);
    }
    if (e === undefined) {
      try {
        e = entryOf(parseManifest(await repo.readPointText(id), id, repo.id));
      } catch (err) {
        // A point pruned between the listing and the read is simply gone.
        if (err instanceof BackupError && (err.code === 'ERR_BACKUP_NO_POINT' || (options.skipDamaged && err.code === 'ERR_BACKUP_MANIFEST'))) continue;
        throw err;
      }
    }
    entries.push(e);
  }
  if (cached !== null && cached.size !== entries.length) stale = true;
  return { entries, stale };
}

/**
 * The entry of every point whose manifest is in the repository, oldest first (ids sort by time):
 * from the index, checked against the listing of `points/`, the points it lacks read from their
 * manifests (see above). A damaged manifest it needs to read throws ERR_BACKUP_MANIFEST, unless
 * `skipDamaged` (a new backup only looks for its parent; verify reports the damage). A stale index
 * is repaired under the index lock when it is free (a holder is writing it already).
 */
export async function pointEntries(repo: Repository, options: { skipDamaged?: boolean } = {}): Promise<PointEntry[]> {
  const { entries, stale } = await collect(repo, options);
  if (stale) {
    await underIndexLock(repo, 0, async () => {
      // Read again under the lock: a backup may have added its point since. The entries just read
      // are reused (they never change once their manifest is written): no manifest is parsed twice.
      const again = await collect(repo, { skipDamaged: true }, new Map(entries.map((e) => [e.id, e])));
      if (again.stale) await writePointIndex(repo, again.entries).catch(() => undefined);
    });
  }
  return entries;
}

/**
 * Add a new point, whose manifest is written, to the index: under the index lock, what the index
 * and the listing hold now (other backups' points included) plus this one. Failures are ignored.
 */
export async function addToPointIndex(repo: Repository, entry: PointEntry): Promise<void> {
  await underIndexLock(repo, ADD_WAIT_MS, async () => {
    const now = await collect(repo, { skipDamaged: true }, new Map([[entry.id, entry]]));
    if (now.stale) await writePointIndex(repo, now.entries).catch(() => undefined);
  });
}
