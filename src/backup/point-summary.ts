/** What `backup list` shows of a point: one rule, used by list and kept in the point index (point-index.ts). */
import type { PointManifest } from './manifest.js';

/** What `backup list` shows of a point: the manifest's own fields, and the top layer's chunk counts. */
export interface PointSummary extends Pick<PointManifest, 'id' | 'name' | 'history' | 'parent' | 'time' | 'plain' | 'source' | 'capacity'> {
  /** The top layer's subformat. */
  subformat: string;
  /** Non-zero chunks the point lists, and how many of them its backup wrote. */
  chunks: number;
  newChunks: number;
  /** For a point of a snapshot chain's layer: how many layers the chain had up to it (its merged view is stored); else 0. */
  chainLayers: number;
}

export function summarize(m: PointManifest): PointSummary {
  const top = m.layers[m.layers.length - 1]!;
  return {
    id: m.id,
    name: m.name,
    history: m.history,
    parent: m.parent,
    time: m.time,
    plain: m.plain,
    source: m.source,
    capacity: m.capacity,
    subformat: top.subformat,
    chunks: m.layers.reduce((n, l) => n + l.chunks.length, 0),
    newChunks: m.stats.newChunks,
    chainLayers: m.chain?.layers.length ?? 0,
  };
}
