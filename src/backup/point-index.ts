/**
 * The index of a repository's points, `REPO/points-index.json`: for each point, the fields that choose
 * a point without reading its manifest — its history, its name and its lineage line (lineage.ts) —
 * so that `backup create` finds its parent, and `latest` or a name resolves, by parsing one small file
 * instead of every manifest (each lists a chunk per MiB of the disk: 2,048 entries for 2 GiB).
 *
 *     {"format":"vmseal-backup-index","version":1,"repository":"<repository id>",
 *      "points":[["<point id>","<history>",<name or null>,"<lineage line, or ''>"], …]}
 *
 * A CACHE, never the source of truth. Each use lists `points/` (one directory read, no manifest
 * read) and trusts an entry only for a manifest that is there: a point missing from the index (a
 * backup killed between its manifest and the index, a vmseal that predates the index, a concurrent
 * backup whose update lost the race) is read from its manifest; an entry without a manifest (a prune
 * killed before it rewrote the index) is dropped; a missing, damaged or foreign file is rebuilt from
 * the manifests. The fields it keeps never change once a manifest is written (a rewrap rewrites only
 * the KeySafe), so an entry of a manifest that is there is the manifest's. Whenever the listing and
 * the file disagree, the corrected index is written back.
 *
 * Writes replace the file whole (temp file, rename) without fsync: a crash may leave the old file,
 * the new one or (on some file systems) an empty one, and each is handled above. Concurrent writers
 * (backups share the repository lock) may lose each other's entry; the next reader repairs it.
 */
import { constants } from 'node:fs';
import { open, readdir, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isTempNameOf, tempName } from '../util/atomic-file.js';
import { Descriptor } from '../vmdk/index.js';
import { BackupError } from './errors.js';
import { HISTORY_RE, POINT_NAME_RE, parseManifest, type PointManifest } from './manifest.js';
import { POINT_ID_RE, type Repository } from './repository.js';
import { RESTORED_FROM_KEY } from './lineage.js';

export const POINT_INDEX_FILE = 'points-index.json';
export const POINT_INDEX_FORMAT = 'vmseal-backup-index';
export const POINT_INDEX_VERSION = 1;
/** Largest index read (about 200,000 points); a larger file is rebuilt from the manifests. */
const MAX_INDEX_BYTES = 64 << 20;
/** Longest lineage line kept (vmseal writes 59 characters); a point with a longer one is read from its manifest. */
const MAX_LINE = 1024;

/** What the index keeps of a point. */
export interface PointEntry {
  id: string;
  history: string;
  name: string | null;
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
  return { id: m.id, history: m.history, name: m.name, line: lineOf(m) };
}

export function pointIndexPath(repo: Repository): string {
  return join(repo.path, POINT_INDEX_FILE);
}

function isEntry(e: unknown): e is [string, string, string | null, string] {
  return (
    Array.isArray(e) &&
    e.length === 4 &&
    typeof e[0] === 'string' &&
    POINT_ID_RE.test(e[0]) &&
    typeof e[1] === 'string' &&
    HISTORY_RE.test(e[1]) &&
    (e[2] === null || (typeof e[2] === 'string' && POINT_NAME_RE.test(e[2]))) &&
    typeof e[3] === 'string' &&
    e[3].length <= MAX_LINE
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
    out.set(e[0], { id: e[0], history: e[1], name: e[2], line: e[3] });
  }
  return out;
}

/** Replace the index with `entries` (oldest first). No fsync: see above. */
export async function writePointIndex(repo: Repository, entries: readonly PointEntry[]): Promise<void> {
  const file = pointIndexPath(repo);
  const body = {
    format: POINT_INDEX_FORMAT,
    version: POINT_INDEX_VERSION,
    repository: repo.id,
    points: entries.filter((e) => e.line.length <= MAX_LINE).map((e) => [e.id, e.history, e.name, e.line]),
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

/** Write the index, ignoring failures (a read-only repository, a full disk): it is only a cache. */
export async function savePointIndex(repo: Repository, entries: readonly PointEntry[]): Promise<void> {
  await writePointIndex(repo, entries).catch(() => undefined);
}

/**
 * The entry of every point whose manifest is in the repository, oldest first (ids sort by time):
 * from the index, checked against the listing of `points/`, the points it lacks read from their
 * manifests (see above). A damaged manifest it needs to read throws ERR_BACKUP_MANIFEST, unless
 * `skipDamaged` (a new backup only looks for its parent; verify reports the damage).
 */
export async function pointEntries(repo: Repository, options: { skipDamaged?: boolean } = {}): Promise<PointEntry[]> {
  const ids = await repo.pointIds();
  const cached = await readIndexFile(repo);
  let stale = cached === null;
  const out: PointEntry[] = [];
  for (const id of ids) {
    let e = cached?.get(id);
    if (e === undefined) {
      stale = true;
      try {
        e = entryOf(parseManifest(await repo.readPointText(id), id, repo.id));
      } catch (err) {
        // A point pruned between the listing and the read is simply gone.
        if (err instanceof BackupError && (err.code === 'ERR_BACKUP_NO_POINT' || (options.skipDamaged && err.code === 'ERR_BACKUP_MANIFEST'))) continue;
        throw err;
      }
    }
    out.push(e);
  }
  if (cached !== null && cached.size !== out.length) stale = true;
  if (stale) await savePointIndex(repo, out);
  return out;
}
