/** Reading the points of a repository, and finding the one a user names (id, name or `latest`). */
import { BackupError } from './errors.js';
import { parseManifest, type PointManifest } from './manifest.js';
import { POINT_ID_RE, type Repository } from './repository.js';
import { pointEntries } from './point-index.js';

/** Read one point's manifest, checked (ERR_BACKUP_NO_POINT, ERR_BACKUP_MANIFEST). */
export async function readPoint(repo: Repository, id: string): Promise<PointManifest> {
  return parseManifest(await repo.readPointText(id), id, repo.id);
}

/**
 * Every point, oldest first. A damaged manifest throws, unless `skipDamaged` (a new backup must not
 * be blocked by one: it only looks for its parent; verify reports the damage).
 */
export async function readPoints(repo: Repository, options: { skipDamaged?: boolean } = {}): Promise<PointManifest[]> {
  const out: PointManifest[] = [];
  for (const id of await repo.pointIds()) {
    try {
      out.push(await readPoint(repo, id));
    } catch (err) {
      // A point pruned between the listing and the read is simply gone.
      if (err instanceof BackupError && (err.code === 'ERR_BACKUP_NO_POINT' || (options.skipDamaged && err.code === 'ERR_BACKUP_MANIFEST'))) continue;
      throw err;
    }
  }
  return out;
}

/**
 * The point `spec` names: a point id, `latest` (the newest point, of `history` if given), or a name
 * given at create (the newest point of that name).
 */
export async function resolvePoint(repo: Repository, spec: string, history?: string): Promise<PointManifest> {
  if (typeof spec !== 'string' || spec === '')
    throw new BackupError('ERR_INVALID_ARGUMENT', 'Expected a point id, name or `latest` for point but received an empty value');
  if (POINT_ID_RE.test(spec)) return readPoint(repo, spec);
  // The index (point-index.ts) picks the point; only its manifest is read.
  const all = (await pointEntries(repo)).filter((p) => history === undefined || p.history === history);
  const matching = spec === 'latest' ? all : all.filter((p) => p.name === spec);
  const found = matching[matching.length - 1];
  if (!found) {
    const what = spec === 'latest' ? 'no point' : `no point named ${JSON.stringify(spec)}`;
    throw new BackupError(
      'ERR_BACKUP_NO_POINT',
      `the backup repository ${repo.path} has ${what}${history === undefined ? '' : ` in history ${JSON.stringify(history)}`}`,
    );
  }
  return readPoint(repo, found.id);
}
