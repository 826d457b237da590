/**
 * Which points a prune removes. Each rule picks points on its own; a prune given several removes
 * every point any of them picks (maintain.ts deletes them and then the chunks no remaining point
 * names).
 *
 * - keepLast N: all but the newest N points of each history.
 * - beforeRekey: the points of each history made under an older disk key. A deep rekey draws a new
 *   DEK and a new `encryption.diskId` (docs/format.md, "Copies, conversions and rekeys"), and a shallow
 *   rekey keeps both, so the manifest's `diskId` names the DEK generation. A history's current
 *   generation is the disk id of its newest encrypted point; its encrypted points with another disk id
 *   are removed. Plain points have no DEK and are left to `plain`; a history without an encrypted
 *   point loses nothing.
 * - plain: every plain point (its chunks are plaintext).
 */
import type { PointManifest } from './manifest.js';

export interface PruneRules {
  keepLast?: number | undefined;
  beforeRekey?: boolean | undefined;
  plain?: boolean | undefined;
}

/** The ids of the points (oldest first, as readPoints gives them) the rules remove. */
export function pointsToPrune(points: readonly PointManifest[], rules: PruneRules): Set<string> {
  const byHistory = new Map<string, PointManifest[]>();
  for (const p of points) byHistory.set(p.history, [...(byHistory.get(p.history) ?? []), p]);
  const removed = new Set<string>();
  for (const list of byHistory.values()) {
    if (rules.keepLast !== undefined) for (const p of list.slice(0, Math.max(0, list.length - rules.keepLast))) removed.add(p.id);
    if (rules.beforeRekey) {
      const current = list.filter((p) => !p.plain).at(-1)?.diskId;
      if (current !== undefined) for (const p of list) if (!p.plain && p.diskId !== current) removed.add(p.id);
    }
    if (rules.plain) for (const p of list) if (p.plain) removed.add(p.id);
  }
  return removed;
}
