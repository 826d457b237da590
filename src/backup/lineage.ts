/**
 * Where a disk's backups continue after a restore: the restored disk carries the line
 *
 *     ddb.vmseal.restoredFrom = "<repository id>:<point id>:<12 hex digits>"
 *
 * written by `backup restore` (a new OUT, or `--over DISK`). The last part is drawn anew by each
 * restore, so two disks restored from the same point are two lineages. A `ddb.` line is what VMware
 * and qemu-img ignore when they do not know it, and it is outside the encryption lines, so no key
 * is needed to write it and the authenticator does not cover it (a backup is history metadata, not
 * a security claim: repository writers are trusted anyway).
 *
 * The history a point belongs to does not change (`ddb.uuid` is kept by a restore); what the line
 * chooses is the point's PARENT: the newest point of the history taken from the same lineage (same
 * line), else the point restored from — not the newest point of the history, which may have been
 * taken from the original disk after the restored point. A disk without the line follows the
 * points taken without one, as before.
 */
import { randomBytes } from 'node:crypto';

export const RESTORED_FROM_KEY = 'ddb.vmseal.restoredFrom';
const VALUE_RE = /^([0-9a-f]{32}):([0-9]{8}T[0-9]{9}Z-[0-9a-f]{8}):([0-9a-f]{12})$/;

export interface RestoredFrom {
  repository: string;
  point: string;
}

/** A new lineage line value for a disk restored from `point` of repository `repositoryId`. */
export function newRestoredFrom(repositoryId: string, point: string): string {
  return `${repositoryId}:${point}:${randomBytes(6).toString('hex')}`;
}

/** The repository and point a line value names, or null when it is not one vmseal wrote. */
export function parseRestoredFrom(value: string | undefined): RestoredFrom | null {
  const m = value === undefined ? null : VALUE_RE.exec(value);
  return m ? { repository: m[1]!, point: m[2]! } : null;
}

/**
 * The parent of a new point of a disk whose lineage line is `line` ('' for none): `history` are the
 * points of its history (their ids and lineage lines, point-index.ts), oldest first; `repositoryId`
 * the repository's.
 */
export function parentInLineage(history: readonly { id: string; line: string }[], line: string, repositoryId: string): string | null {
  for (let i = history.length - 1; i >= 0; i--) if (history[i]!.line === line) return history[i]!.id;
  const from = parseRestoredFrom(line);
  if (from && from.repository === repositoryId && history.some((p) => p.id === from.point)) return from.point;
  // A line of another repository, or of a pruned point: the newest point of the history, as for any disk.
  return history.length > 0 ? history[history.length - 1]!.id : null;
}
