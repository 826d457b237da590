/**
 * The manifest of a backup point: `points/<id>.json`, UTF-8 JSON (docs/backup.md gives every field).
 *
 * A point lists LAYERS, bottom first (each with its descriptor text, KeySafe included, subformat and
 * chunk list; the point's disk is the top layer read over those below). This version writes one
 * layer: the whole virtual ciphertext view of the disk — for a layer of a snapshot chain, the
 * chain's merged view under a flattened descriptor, the real layers being recorded in `chain`
 * (chain-point.ts) — and restores only one-layer points.
 *
 * Manifests carry no key and no MAC: whoever can write the repository can write a manifest, so
 * repository writers are trusted. The reader still refuses anything that could make a restore write
 * outside its output (extent names with `/`, `\` or `..`), allocate without bound (sizes are
 * checked) or write unverified data (every chunk is hashed before it is written).
 */
import { Descriptor, MAX_DESCRIPTOR_BYTES } from '../vmdk/index.js';
import { BackupError } from './errors.js';
import type { PointChain } from './chain-point.js';
import { CHUNK_SIZE, POINT_ID_RE, isChunkHash } from './repository.js';

export const MANIFEST_FORMAT = 'vmseal-backup-point';
export const MANIFEST_VERSION = 1;
/** Largest manifest read (about 3 million chunk entries, 3 TiB of non-zero data). */
export const MAX_MANIFEST_BYTES = 256 << 20;
/** Most layers a point may list. */
export const MAX_LAYERS = 256;
/** Subformats a point's layer can have (what restore can recreate). */
export const BACKUP_SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'vmfs', 'raw'] as const;
export type BackupSubformat = (typeof BACKUP_SUBFORMATS)[number];
/** Point names: what `--name` accepts (never a point id's shape, never `latest`). */
export const POINT_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** Histories: printable ASCII (a ddb.uuid has spaces), 1 to 256 characters. */
export const HISTORY_RE = /^[\x20-\x7E]{1,256}$/;

/** One (offset, chunk) pair: the chunk holds bytes [offset, offset + min(chunkSize, capacity − offset)) of the layer. */
export type ChunkEntry = [offset: number, hash: string];

export interface PointLayer {
  /** The layer's subformat (its createType, or `raw`). */
  subformat: BackupSubformat;
  /** The descriptor text as the disk had it (KeySafe and every line included); null for a raw image. */
  descriptor: string | null;
  /** Virtual size in bytes. */
  capacity: number;
  /** Grain size of a sparse layer in bytes; null for flat and raw. */
  grainSize: number | null;
  /** Size of each extent but the last, for twoGbMaxExtent subformats; null otherwise. */
  extentSize: number | null;
  /** The non-zero chunks of the layer's ciphertext view, by increasing offset; every other chunk is a hole (zeros). */
  chunks: ChunkEntry[];
}

export interface PointManifest {
  format: typeof MANIFEST_FORMAT;
  version: typeof MANIFEST_VERSION;
  /** The repository's id (a manifest copied from another repository is refused). */
  repository: string;
  id: string;
  name: string | null;
  history: string;
  /** The previous point of the same history when this one was made; null for the first. */
  parent: string | null;
  /** When the point was made (ISO 8601, UTC). */
  time: string;
  /** True for a point of a plain (unencrypted) disk, stored with allowPlain: its chunks are plaintext. */
  plain: boolean;
  /** The disk's path when it was backed up (informational). */
  source: string;
  capacity: number;
  chunkSize: number;
  /** The XTS data-unit size of an encrypted disk; null for a plain one. */
  unitSize: number | null;
  /** encryption.diskId of an encrypted disk; null for a plain one. */
  diskId: string | null;
  layers: PointLayer[];
  /**
   * Present only on a point of a snapshot chain's layer (chain-point.ts): the chain's real layers,
   * base first, and which one was backed up. `layers` then holds one layer, the chain's merged view
   * with a flattened descriptor.
   */
  chain?: PointChain;
  /** Counts of the backup that made the point: chunks listed, chunks it wrote, bytes it wrote. */
  stats: { chunks: number; newChunks: number; newBytes: number };
}

function bad(id: string, why: string): BackupError {
  return new BackupError('ERR_BACKUP_MANIFEST', `the manifest of point ${id} is not valid: ${why}`);
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

/** An extent file name a restore could be made to use: a bare name in the descriptor's folder. */
export function isSafeExtentName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\\') && !name.includes('\0') && !name.includes('..');
}

function checkLayer(id: string, l: unknown, i: number): PointLayer {
  const at = `layers[${i}]`;
  if (!isObject(l)) throw bad(id, `${at} is not an object`);
  if (typeof l.subformat !== 'string' || !(BACKUP_SUBFORMATS as readonly string[]).includes(l.subformat))
    throw bad(id, `${at}.subformat is not one of ${BACKUP_SUBFORMATS.join(', ')}`);
  const subformat = l.subformat as BackupSubformat;
  if (!isCount(l.capacity) || l.capacity === 0 || l.capacity % 512 !== 0) throw bad(id, `${at}.capacity is not a positive multiple of 512`);
  const capacity = l.capacity;
  if (!(l.grainSize === null || (isCount(l.grainSize) && l.grainSize >= 4096 && l.grainSize <= CHUNK_SIZE && (l.grainSize & (l.grainSize - 1)) === 0))) {
    throw bad(id, `${at}.grainSize is not null or a power of two from 4096 to ${CHUNK_SIZE}`);
  }
  if (!(l.extentSize === null || (isCount(l.extentSize) && l.extentSize > 0 && l.extentSize % 512 === 0)))
    throw bad(id, `${at}.extentSize is not null or a positive multiple of 512`);
  let descriptor: string | null = null;
  if (subformat === 'raw') {
    if (l.descriptor !== null) throw bad(id, `${at} is raw but has a descriptor`);
  } else {
    if (typeof l.descriptor !== 'string' || Buffer.byteLength(l.descriptor) > MAX_DESCRIPTOR_BYTES) throw bad(id, `${at}.descriptor is not a descriptor text`);
    descriptor = l.descriptor;
    let d: Descriptor;
    try {
      d = Descriptor.parse(descriptor);
    } catch (err) {
      throw bad(id, `${at}.descriptor does not parse: ${(err as Error).message}`);
    }
    for (const e of d.extents) {
      if (e.file !== undefined && !isSafeExtentName(e.file)) {
        throw bad(id, `${at}.descriptor names the extent file ${JSON.stringify(e.file)}, which is not a bare file name (a path or "..")`);
      }
    }
    if (d.createType !== subformat) throw bad(id, `${at}.descriptor's createType is not ${subformat}`);
  }
  if (!Array.isArray(l.chunks)) throw bad(id, `${at}.chunks is not an array`);
  let last = -1;
  for (const [j, c] of (l.chunks as unknown[]).entries()) {
    if (!Array.isArray(c) || c.length !== 2 || !isCount(c[0]) || !isChunkHash(c[1])) throw bad(id, `${at}.chunks[${j}] is not [offset, sha256 hex]`);
    const off = c[0];
    if (off % CHUNK_SIZE !== 0 || off >= capacity || off <= last)
      throw bad(id, `${at}.chunks[${j}] has offset ${off}: not a chunk boundary inside the layer, after the previous one`);
    last = off;
  }
  return { subformat, descriptor, capacity, grainSize: l.grainSize, extentSize: l.extentSize, chunks: l.chunks as ChunkEntry[] };
}

/** The `chain` field: 2 to MAX_LAYERS layers of parseable descriptors, `backedUp` the last, over a one-layer point. */
function checkChain(id: string, c: unknown, layerCount: number): PointChain {
  if (!isObject(c) || !Array.isArray(c.layers) || c.layers.length < 2 || c.layers.length > MAX_LAYERS) {
    throw bad(id, `"chain" is not an object with 2 to ${MAX_LAYERS} layers`);
  }
  if (layerCount !== 1) throw bad(id, '"chain" is given but "layers" holds more than the merged view');
  if (c.backedUp !== c.layers.length - 1) throw bad(id, '"chain.backedUp" is not the index of the last layer');
  const layers = (c.layers as unknown[]).map((l, i) => {
    const at = `chain.layers[${i}]`;
    if (!isObject(l) || typeof l.path !== 'string' || typeof l.subformat !== 'string' || typeof l.descriptor !== 'string') {
      throw bad(id, `${at} is not {path, subformat, descriptor}`);
    }
    if (Buffer.byteLength(l.descriptor) > MAX_DESCRIPTOR_BYTES) throw bad(id, `${at}.descriptor is too long`);
    try {
      Descriptor.parse(l.descriptor);
    } catch (err) {
      throw bad(id, `${at}.descriptor does not parse: ${(err as Error).message}`);
    }
    return { path: l.path, subformat: l.subformat, descriptor: l.descriptor };
  });
  return { layers, backedUp: layers.length - 1 };
}

/** Parse and check a manifest read from `points/<id>.json` of the repository `repositoryId`. */
export function parseManifest(text: string, id: string, repositoryId: string): PointManifest {
  if (text.length > MAX_MANIFEST_BYTES) throw bad(id, `it is larger than ${MAX_MANIFEST_BYTES} bytes`);
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch (err) {
    throw new BackupError('ERR_BACKUP_MANIFEST', `the manifest of point ${id} is not JSON (a damaged file?)`, { cause: err });
  }
  if (!isObject(m)) throw bad(id, 'not a JSON object');
  if (m.format !== MANIFEST_FORMAT) throw bad(id, `no "format": "${MANIFEST_FORMAT}"`);
  if (m.version !== MANIFEST_VERSION) throw bad(id, `version ${JSON.stringify(m.version)} is not ${MANIFEST_VERSION} (made by a newer vmseal?)`);
  if (m.repository !== repositoryId) throw bad(id, 'it belongs to another repository');
  if (m.id !== id) throw bad(id, 'its "id" is not its file name');
  if (!(m.name === null || (typeof m.name === 'string' && POINT_NAME_RE.test(m.name)))) throw bad(id, '"name" is not null or a point name');
  if (typeof m.history !== 'string' || !HISTORY_RE.test(m.history)) throw bad(id, '"history" is not 1 to 256 printable characters');
  if (!(m.parent === null || (typeof m.parent === 'string' && POINT_ID_RE.test(m.parent)))) throw bad(id, '"parent" is not null or a point id');
  if (typeof m.time !== 'string' || Number.isNaN(Date.parse(m.time))) throw bad(id, '"time" is not a date');
  if (typeof m.plain !== 'boolean') throw bad(id, '"plain" is not a boolean');
  if (typeof m.source !== 'string') throw bad(id, '"source" is not a string');
  if (!isCount(m.capacity) || m.capacity === 0) throw bad(id, '"capacity" is not a positive integer');
  if (m.chunkSize !== CHUNK_SIZE) throw bad(id, `"chunkSize" is not ${CHUNK_SIZE}`);
  if (m.plain ? m.unitSize !== null : m.unitSize !== 512 && m.unitSize !== 4096) throw bad(id, '"unitSize" is not null (plain) or 512 or 4096 (encrypted)');
  if (m.plain ? m.diskId !== null : typeof m.diskId !== 'string' || !/^[0-9a-f]{32}$/.test(m.diskId))
    throw bad(id, '"diskId" is not null (plain) or 32 hex digits (encrypted)');
  if (!Array.isArray(m.layers) || m.layers.length === 0 || m.layers.length > MAX_LAYERS) throw bad(id, `"layers" is not an array of 1 to ${MAX_LAYERS} layers`);
  const layers = (m.layers as unknown[]).map((l, i) => checkLayer(id, l, i));
  for (const l of layers) {
    if (l.capacity !== m.capacity) throw bad(id, 'a layer has another capacity than the point');
    const encrypted = l.descriptor !== null && Descriptor.parse(l.descriptor).isEncrypted();
    if (encrypted === m.plain) throw bad(id, `"plain" is ${String(m.plain)} but a layer's descriptor is ${encrypted ? '' : 'not '}encrypted`);
  }
  const chain = m.chain === undefined ? undefined : checkChain(id, m.chain, layers.length);
  const s = m.stats;
  if (!isObject(s) || !isCount(s.chunks) || !isCount(s.newChunks) || !isCount(s.newBytes)) throw bad(id, '"stats" is not {chunks, newChunks, newBytes}');
  return {
    format: MANIFEST_FORMAT,
    version: MANIFEST_VERSION,
    repository: m.repository,
    id,
    name: m.name,
    history: m.history,
    parent: m.parent,
    time: m.time,
    plain: m.plain,
    source: m.source,
    capacity: m.capacity,
    chunkSize: CHUNK_SIZE,
    unitSize: m.unitSize as number | null,
    diskId: m.diskId as string | null,
    layers,
    ...(chain ? { chain } : {}),
    stats: { chunks: s.chunks, newChunks: s.newChunks, newBytes: s.newBytes },
  };
}

/** The manifest's file text: compact JSON (a point of a 2 TiB disk lists up to 2 million chunks) and a newline. */
export function serializeManifest(m: PointManifest): string {
  return `${JSON.stringify(m)}\n`;
}
