/**
 * The journal of an in-place job (encryption in place, deep rekey in place): `<disk>.vmseal-journal`
 * beside the disk. It lets the same call finish after a crash at any point with correct data.
 *
 * Layout (all integers little-endian):
 *
 *   0        header area, 64 KiB:  "VMSJRNL2" | u32 n | n bytes of UTF-8 JSON (JournalHeader) | 32 B MAC of the JSON
 *   65536    state slot A, 512 B:  "VMSJSTAT" | u64 seq | u32 chunk | u32 status | u64 offset | u32 length
 *                                  | 32 B SHA-256 of the chunk copy | 32 B MAC of the 68 bytes before it
 *   66048    state slot B, 512 B:  same; the valid slot with the higher seq is the current state
 *   69632    copy area: the ORIGINAL bytes of the chunk being rewritten (≤ chunkSize)
 *
 * Protocol for chunk k (every step durable before the next):
 *   1. copy chunk k's current bytes into the copy area, fsync
 *   2. state {k, IN_PROGRESS, hash of the copy}, fsync      (written to the slot not holding the current state)
 *   3. overwrite chunk k on the disk with its transformed bytes, fsync the disk
 *   4. state {k, DONE}, fsync
 * On resume: state DONE k → continue at k+1; IN_PROGRESS k → transform the journal's copy of k
 * (the disk's bytes may be half written), write, mark done, continue. A torn state write fails its
 * hash and the other slot (one step older) is used, which is safe because every step is idempotent.
 *
 * Authentication (version 2, "VMSJRNL2"): MAC = HMAC-SHA-256 keyed with
 * HKDF-SHA-256(DEK of the journal's target encryption lines `to`, salt empty, info "vmseal journal v2", 32 B).
 * Anyone who can write the disk's folder can write a journal, and `resume` (often run as root) acts on
 * it — rewrites descriptors, writes chunks: a journal whose header or state fails its MAC is refused.
 * The key exists only for whoever can unlock the DEK, which resume needs anyway. A shallow rekey keeps
 * the DEK, so its journal is authenticated by either KeySafe.
 * Version 1 ("VMSJRNL1", SHA-256 in place of the MAC) is read for compatibility and trusted only when
 * its descriptor equals the disk's current one (see inplace.ts), or with `trustV1Journal`.
 * Every extent named by the journal's descriptors must be a plain file name in the disk's folder.
 *
 * What the journal holds: the copy area has the chunk's original bytes — plaintext only for an
 * encryption in place (whose source was plaintext anyway), ciphertext under the old key for a
 * rekey. Keys appear only wrapped: the header holds KeySafe strings, never raw keys.
 */
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { hkdfSha256 } from '../util/hkdf.js';
import { basename, dirname, join } from 'node:path';
import { PipelineError } from './errors.js';
import { fsyncDir, pathExists } from './staging.js';

import { DiskError, JOURNAL_SUFFIX } from '../disk/for-pipeline.js';
import { NameReservations } from './lock.js';
import { readFully, writeFully } from '../util/file-io.js';
// A journal's chunkSize above the jobs' own bound is refused: a corrupt header must not allocate GiBs.
import { MAX_CHUNK } from './chunk-limits.js';
export { JOURNAL_SUFFIX };
const MAGIC_V1 = Buffer.from('VMSJRNL1', 'ascii');
const MAGIC_V2 = Buffer.from('VMSJRNL2', 'ascii');
/** A snapshot commit's journal (commit-journal.ts) has the same name: refused here, resumed there. */
const COMMIT_MAGIC = Buffer.from('VMSCMIT1', 'ascii');
const HKDF_INFO = 'vmseal journal v2';
const STATE_MAGIC = Buffer.from('VMSJSTAT', 'ascii');
const HEADER_AREA = 65536;
const SLOT_SIZE = 512;
const SLOT_A = HEADER_AREA;
const SLOT_B = HEADER_AREA + SLOT_SIZE;
const COPY_AREA = 69632;

export const ChunkStatus = { IN_PROGRESS: 1, DONE: 2 } as const;
export type ChunkStatus = (typeof ChunkStatus)[keyof typeof ChunkStatus];

/**
 * `restore-over` is the quick rollback of src/backup (restore-over.ts): no chunk copy, no state
 * slots — its target content is the point's, named by `restore`, so a resume repeats the whole
 * comparison and writes what still differs. It needs no key: its MAC key is derived, as below, from
 * the 16 bytes of the backup repository's id instead of a DEK (whoever can read that id can read
 * the repository's chunks anyway, which is all a forged journal could make resume write).
 */
export type InPlaceOperation = 'encrypt-in-place' | 'rekey-deep-in-place' | 'rekey-shallow' | 'restore-over';

/** Encryption parameters as the journal records them (KeySafe wrapped; no raw key). */
export interface JournalParams {
  formatVersion: number;
  cipher: string;
  unitSize: number;
  diskId: string;
  authenticator: string;
  keySafe: string;
  /** Format version 2: the data check line (the final one, for `to`). */
  dataCheck?: string;
}

export interface JournalHeader {
  version: 1 | 2;
  operation: InPlaceOperation;
  /** Base name of the disk's descriptor (a journal beside another disk is refused). */
  disk: string;
  capacity: number;
  chunkSize: number;
  /** Chunks are cut at multiples of this. */
  align: number;
  /** The encryption before the job (null: the disk was plain). */
  from: JournalParams | null;
  /** The encryption after the job. */
  to: JournalParams;
  started: string;
  /**
   * The whole descriptor (base64) while the job runs (`during`: with the encryption.job line) and
   * after it (`final`). Resume rewrites them: an embedded descriptor torn by a crash is made whole.
   */
  descriptor: { during: string; final: string };
  /** `restore-over` only: the backup repository (absolute path) and the point the disk is rolled back to. */
  restore?: { repository: string; point: string };
  /**
   * A shallow rekey of a snapshot chain: the final descriptor (base64) of every layer below the top,
   * each `path` relative to the top's folder. Resume writes them all (every layer gets the new KeySafe).
   */
  layers?: Array<{ path: string; final: string }>;
}

export interface JournalState {
  seq: number;
  chunk: number;
  status: ChunkStatus;
  offset: number;
  length: number;
  copyHash: Buffer;
}

export function journalPathOf(diskPath: string): string {
  return diskPath + JOURNAL_SUFFIX;
}

const sha256 = (b: Uint8Array): Buffer => createHash('sha256').update(b).digest();

/** The journal's MAC key, derived from the DEK of its target lines (never stored). */
export function journalMacKey(dek: Uint8Array): Buffer {
  return hkdfSha256(dek, HKDF_INFO, 32);
}

/** Version 2: HMAC-SHA-256 with the journal key; version 1: plain SHA-256 (no key). */
function seal(key: Buffer | null, data: Uint8Array): Buffer {
  return key ? createHmac('sha256', key).update(data).digest() : sha256(data);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** A name an extent line may carry in a journal: a plain file name in the disk's own folder. */
export function isPlainFileName(name: string): boolean {
  return name.length > 0 && name !== '.' && name !== '..' && !/[/\\\0]/.test(name);
}

export class Journal {
  readonly path: string;
  readonly header: JournalHeader;
  #fh: FileHandle;
  #state: JournalState | null;
  #slot: number;
  /** Version 2: the MAC key once authenticate() succeeded (or create() made it); null for version 1. */
  #key: Buffer | null;
  #authenticated: boolean;
  /** The bytes the MACs cover, kept from open() until authenticate(). */
  #raw: { json: Buffer; mac: Buffer; area: Buffer } | null;

  private constructor(
    path: string,
    fh: FileHandle,
    header: JournalHeader,
    init: { state: JournalState | null; slot: number; key: Buffer | null; authenticated: boolean; raw?: { json: Buffer; mac: Buffer; area: Buffer } },
  ) {
    this.path = path;
    this.#fh = fh;
    this.header = header;
    this.#state = init.state;
    this.#slot = init.slot;
    this.#key = init.key;
    this.#authenticated = init.authenticated;
    this.#raw = init.raw ?? null;
  }

  /** The journal's format version: 2 is authenticated with the DEK, 1 only checksummed. */
  get version(): 1 | 2 {
    return this.header.version;
  }

  /** True once the header and state are verified (version 2), or always for version 1 (checksums only). */
  get authenticated(): boolean {
    return this.#authenticated;
  }

  get state(): JournalState | null {
    if (!this.#authenticated) throw new PipelineError('ERR_JOURNAL', `internal: the state of ${this.path} was read before the journal was authenticated`);
    return this.#state;
  }

  /**
   * Version 2: check the header's and the state slots' MACs with the key derived from `dek` (the DEK
   * of the header's `to` lines, unlocked by the caller). A journal that fails is refused: it was
   * changed by someone without the key, or it belongs to another disk.
   */
  authenticate(dek: Uint8Array): void {
    if (this.#authenticated) return;
    const raw = this.#raw!;
    const key = journalMacKey(dek);
    if (!sameBytes(seal(key, raw.json), raw.mac)) {
      key.fill(0);
      throw new PipelineError(
        'ERR_JOURNAL',
        `the journal ${this.path} fails its authentication: it was changed, or it was not written for this disk's key; refusing to act on it. ` +
          'If no job was interrupted on this disk, move the journal away and check the disk with `vmseal verify`.',
      );
    }
    const { state, slot } = chooseState(raw.area, key);
    this.#key = key;
    this.#state = state;
    this.#slot = slot;
    this.#authenticated = true;
    this.#raw = null;
  }

  static async exists(diskPath: string): Promise<boolean> {
    return pathExists(journalPathOf(diskPath));
  }

  /** Create a new journal (refuses to replace one: an unfinished job must be resumed first). */
  static async create(diskPath: string, header: JournalHeader, dek: Uint8Array): Promise<Journal> {
    const path = journalPathOf(diskPath);
    if (header.version !== 2) throw new PipelineError('ERR_JOURNAL', `internal: new journals are version 2, not ${String(header.version)}`);
    checkExtentNames(header, path);
    const key = journalMacKey(dek);
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    if (MAGIC_V2.length + 4 + json.length + 32 > HEADER_AREA) {
      throw new PipelineError('ERR_JOURNAL', `the journal header for ${diskPath} is too large (${json.length} bytes of JSON)`);
    }
    if (header.chunkSize > MAX_CHUNK)
      throw new PipelineError('ERR_INVALID_ARGUMENT', `chunkSize ${header.chunkSize} is larger than ${MAX_CHUNK} for an in-place job`);
    const area = Buffer.alloc(COPY_AREA);
    MAGIC_V2.copy(area, 0);
    area.writeUInt32LE(json.length, 8);
    json.copy(area, 12);
    seal(key, json).copy(area, 12 + json.length);
    if (await pathExists(path)) {
      throw new PipelineError('ERR_JOURNAL', `${path} exists: an in-place job on ${diskPath} did not finish; resume it first`);
    }
    // Written under a temporary name and renamed: a crash never leaves a half-written journal.
    await removeDeadTemps(path);
    const tmp = `${path}.${process.pid}.tmp`;
    // The temp name is reserved while it exists: a cleaner removes only temps nobody holds.
    const names = new NameReservations();
    try {
      await names.reserve([tmp], 'exclusive');
      const w = await open(tmp, 'w', 0o600);
      try {
        await writeFully(w, area, 0);
        await w.sync();
      } finally {
        await w.close();
      }
      await rename(tmp, path);
    } finally {
      names.close();
    }
    const fh = await open(path, 'r+');
    await fsyncDir(dirname(path));
    return new Journal(path, fh, header, { state: null, slot: SLOT_B, key, authenticated: true });
  }

  /** Open an existing journal; null when there is none. */
  static async open(diskPath: string): Promise<Journal | null> {
    const path = journalPathOf(diskPath);
    await removeDeadTemps(path);
    let fh: FileHandle;
    try {
      fh = await open(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const area = Buffer.alloc(COPY_AREA);
      const bytesRead = await readFully(fh, area, 0);
      const bad = (why: string): PipelineError =>
        new PipelineError('ERR_JOURNAL', `the journal ${path} is unreadable (${why}); the in-place job on ${diskPath} cannot be resumed safely`);
      const magic = area.subarray(0, 8);
      if (magic.equals(COMMIT_MAGIC)) {
        throw new DiskError(
          'ERR_INTERRUPTED_JOB',
          `${diskPath} is the top of a chain whose snapshot commit did not finish (journal ${path}); finish it first (vmseal resume)`,
        );
      }
      const version = magic.equals(MAGIC_V2) ? 2 : magic.equals(MAGIC_V1) ? 1 : 0;
      if (bytesRead < 12 || version === 0) throw bad('wrong magic or truncated');
      const n = area.readUInt32LE(8);
      if (n > HEADER_AREA - 12 - 32) throw bad('header length out of range');
      const json = Buffer.from(area.subarray(12, 12 + n));
      const mac = Buffer.from(area.subarray(12 + n, 12 + n + 32));
      if (version === 1 && !sha256(json).equals(mac)) throw bad('header checksum mismatch');
      let header: JournalHeader;
      try {
        header = JSON.parse(json.toString('utf8')) as JournalHeader;
      } catch {
        throw bad('header is not JSON');
      }
      if (
        header === null ||
        typeof header !== 'object' ||
        header.version !== version ||
        !Number.isSafeInteger(header.chunkSize) ||
        header.chunkSize <= 0 ||
        header.chunkSize > MAX_CHUNK
      ) {
        throw bad('unknown version or chunk size');
      }
      checkExtentNames(header, path);
      if (version === 1) {
        const { state, slot } = chooseState(area, null);
        return new Journal(path, fh, header, { state, slot, key: null, authenticated: true });
      }
      return new Journal(path, fh, header, { state: null, slot: SLOT_B, key: null, authenticated: false, raw: { json, mac, area } });
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  /** Step 1: keep chunk's original bytes. */
  async saveCopy(data: Uint8Array): Promise<void> {
    await writeFully(this.#fh, data, COPY_AREA);
    await this.#fh.sync();
  }

  /** The saved copy of the chunk named by the current IN_PROGRESS state, checked against its hash. */
  async readCopy(): Promise<Buffer> {
    const s = this.#state;
    if (!s || s.status !== ChunkStatus.IN_PROGRESS) throw new PipelineError('ERR_JOURNAL', `internal: no chunk in progress in ${this.path}`);
    if (s.length > this.header.chunkSize) throw new PipelineError('ERR_JOURNAL', `the journal ${this.path} names a chunk longer than its chunk size`);
    const buf = Buffer.alloc(s.length);
    const bytesRead = await readFully(this.#fh, buf, COPY_AREA);
    if (bytesRead !== s.length || !sha256(buf).equals(s.copyHash)) {
      throw new PipelineError('ERR_JOURNAL', `the saved copy of chunk ${s.chunk} in ${this.path} does not match its checksum`);
    }
    return buf;
  }

  /** Steps 2 and 4: record a chunk's state durably. */
  async record(chunk: number, status: ChunkStatus, offset: number, length: number, copyHash: Buffer): Promise<void> {
    if (!this.#authenticated) throw new PipelineError('ERR_JOURNAL', `internal: ${this.path} written before it was authenticated`);
    const seq = (this.#state?.seq ?? 0) + 1;
    const slot = this.#slot === SLOT_A ? SLOT_B : SLOT_A;
    const buf = Buffer.alloc(SLOT_SIZE);
    STATE_MAGIC.copy(buf, 0);
    buf.writeBigUInt64LE(BigInt(seq), 8);
    buf.writeUInt32LE(chunk, 16);
    buf.writeUInt32LE(status, 20);
    buf.writeBigUInt64LE(BigInt(offset), 24);
    buf.writeUInt32LE(length, 32);
    copyHash.copy(buf, 36);
    seal(this.#key, buf.subarray(0, 68)).copy(buf, 68);
    await writeFully(this.#fh, buf, slot);
    await this.#fh.sync();
    this.#slot = slot;
    this.#state = { seq, chunk, status, offset, length, copyHash };
  }

  async close(): Promise<void> {
    this.#key?.fill(0);
    await this.#fh.close().catch(() => undefined);
  }

  /** The job is complete: wipe the copy area, remove the journal. */
  async finish(): Promise<void> {
    const zero = Buffer.alloc(Math.min(this.header.chunkSize, 1 << 20));
    for (let off = 0; off < this.header.chunkSize; off += zero.length) {
      await writeFully(this.#fh, zero.subarray(0, Math.min(zero.length, this.header.chunkSize - off)), COPY_AREA + off);
    }
    await this.#fh.close();
    await unlink(this.path);
    await fsyncDir(dirname(this.path));
  }
}

export { sha256 as hashCopy };

/**
 * Remove `<journal>.<pid>.tmp` files of jobs that died while creating a journal: a temp whose name
 * can be reserved has no live writer (its writer holds the name from before creating it until the
 * rename), whatever its pid says.
 */
async function removeDeadTemps(path: string): Promise<void> {
  const prefix = `${basename(path)}.`;
  const temps = (await readdir(dirname(path)).catch(() => [] as string[])).filter((f) => f.startsWith(prefix) && /^\d+\.tmp$/.test(f.slice(prefix.length)));
  if (temps.length === 0) return;
  const names = new NameReservations();
  try {
    for (const f of temps) {
      const tmp = join(dirname(path), f);
      if (!names.tryReserveExclusive(tmp)) continue;
      await unlink(tmp).catch(() => undefined);
      names.release(tmp);
    }
  } catch {
    // a folder we cannot lock in (read-only): leave the temps; they are only litter
  } finally {
    names.close();
  }
}

/** The valid slot with the higher sequence number (a torn or forged slot fails its MAC and is skipped). */
function chooseState(area: Buffer, key: Buffer | null): { state: JournalState | null; slot: number } {
  const a = parseSlot(area, SLOT_A, key);
  const b = parseSlot(area, SLOT_B, key);
  if (a && (!b || a.seq > b.seq)) return { state: a, slot: SLOT_A };
  if (b) return { state: b, slot: SLOT_B };
  return { state: null, slot: SLOT_B };
}

/** Resume rewrites the descriptors a journal holds: their extents must stay files of the disk's own folder. */
function checkExtentNames(header: JournalHeader, path: string): void {
  const d = header.descriptor;
  if (!d || typeof d.during !== 'string' || typeof d.final !== 'string') {
    throw new PipelineError('ERR_JOURNAL', `the journal ${path} has no descriptors; it cannot be resumed safely`);
  }
  const layers = header.layers;
  if (
    layers !== undefined &&
    (!Array.isArray(layers) || !layers.every((l) => l && typeof l.path === 'string' && l.path !== '' && !l.path.includes('\0') && typeof l.final === 'string'))
  ) {
    throw new PipelineError('ERR_JOURNAL', `the journal ${path} lists snapshot layers it cannot name; it cannot be resumed safely`);
  }
  for (const b64 of [d.during, d.final, ...(layers ?? []).map((l) => l.final)]) {
    const text = Buffer.from(b64, 'base64').toString('latin1');
    for (const m of text.matchAll(/^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"/gm)) {
      if (!isPlainFileName(m[1])) {
        throw new PipelineError(
          'ERR_JOURNAL',
          `the journal ${path} names the extent file ${JSON.stringify(m[1])}, which is not a plain file name in the disk's folder; refusing to resume from it`,
        );
      }
    }
  }
}

function parseSlot(area: Buffer, at: number, key: Buffer | null): JournalState | null {
  const buf = area.subarray(at, at + SLOT_SIZE);
  if (buf.length < SLOT_SIZE || !buf.subarray(0, 8).equals(STATE_MAGIC)) return null;
  if (!sameBytes(seal(key, buf.subarray(0, 68)), buf.subarray(68, 100))) return null;
  const status = buf.readUInt32LE(20) as ChunkStatus;
  if (status !== ChunkStatus.IN_PROGRESS && status !== ChunkStatus.DONE) return null;
  return {
    seq: Number(buf.readBigUInt64LE(8)),
    chunk: buf.readUInt32LE(16),
    status,
    offset: Number(buf.readBigUInt64LE(24)),
    length: buf.readUInt32LE(32),
    copyHash: Buffer.from(buf.subarray(36, 68)),
  };
}
