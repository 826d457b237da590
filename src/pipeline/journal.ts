/**
 * The journal of an in-place job (encryption in place, deep rekey in place): `<disk>.vmseal-journal`
 * beside the disk. It lets the same call finish after a crash at any point with correct data.
 *
 * Layout (all integers little-endian):
 *
 *   0        header area, 64 KiB:  "VMSJRNL1" | u32 n | n bytes of UTF-8 JSON (JournalHeader) | SHA-256 of the JSON
 *   65536    state slot A, 512 B:  "VMSJSTAT" | u64 seq | u32 chunk | u32 status | u64 offset | u32 length
 *                                  | 32 B SHA-256 of the chunk copy | 32 B SHA-256 of the bytes before it
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
 * What the journal holds: the copy area has the chunk's original bytes — plaintext only for an
 * encryption in place (whose source was plaintext anyway), ciphertext under the old key for a
 * rekey. Keys appear only wrapped: the header holds KeySafe strings, never raw keys.
 */
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { basename, dirname, join } from 'node:path';
import { PipelineError } from './errors.js';
import { fsyncDir, pathExists } from './staging.js';

import { JOURNAL_SUFFIX } from '../disk/open.js';
import { pidAlive } from '../util/process.js';
import { readFully, writeFully } from '../util/file-io.js';
export { JOURNAL_SUFFIX };
const MAGIC = Buffer.from('VMSJRNL1', 'ascii');
const STATE_MAGIC = Buffer.from('VMSJSTAT', 'ascii');
const HEADER_AREA = 65536;
const SLOT_SIZE = 512;
const SLOT_A = HEADER_AREA;
const SLOT_B = HEADER_AREA + SLOT_SIZE;
const COPY_AREA = 69632;
/** A chunk copy larger than this is refused (the journal's header says chunkSize; a corrupt one must not allocate GiBs). */
const MAX_CHUNK = 256 << 20;

export const ChunkStatus = { IN_PROGRESS: 1, DONE: 2 } as const;
export type ChunkStatus = (typeof ChunkStatus)[keyof typeof ChunkStatus];

export type InPlaceOperation = 'encrypt-in-place' | 'rekey-deep-in-place' | 'rekey-shallow';

/** Encryption parameters as the journal records them (KeySafe wrapped; no raw key). */
export interface JournalParams {
  formatVersion: number;
  cipher: string;
  unitSize: number;
  diskId: string;
  authenticator: string;
  keySafe: string;
}

export interface JournalHeader {
  version: 1;
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

export class Journal {
  readonly path: string;
  readonly header: JournalHeader;
  #fh: FileHandle;
  #state: JournalState | null;
  #slot: number;

  private constructor(path: string, fh: FileHandle, header: JournalHeader, state: JournalState | null, slot: number) {
    this.path = path;
    this.#fh = fh;
    this.header = header;
    this.#state = state;
    this.#slot = slot;
  }

  get state(): JournalState | null {
    return this.#state;
  }

  static async exists(diskPath: string): Promise<boolean> {
    return pathExists(journalPathOf(diskPath));
  }

  /** Create a new journal (refuses to replace one: an unfinished job must be resumed first). */
  static async create(diskPath: string, header: JournalHeader): Promise<Journal> {
    const path = journalPathOf(diskPath);
    const json = Buffer.from(JSON.stringify(header), 'utf8');
    if (MAGIC.length + 4 + json.length + 32 > HEADER_AREA) {
      throw new PipelineError('ERR_JOURNAL', `the journal header for ${diskPath} is too large (${json.length} bytes of JSON)`);
    }
    if (header.chunkSize > MAX_CHUNK) throw new PipelineError('ERR_ARGUMENT', `chunkSize ${header.chunkSize} is larger than ${MAX_CHUNK} for an in-place job`);
    const area = Buffer.alloc(COPY_AREA);
    MAGIC.copy(area, 0);
    area.writeUInt32LE(json.length, 8);
    json.copy(area, 12);
    sha256(json).copy(area, 12 + json.length);
    if (await pathExists(path)) {
      throw new PipelineError('ERR_JOURNAL', `${path} exists: an in-place job on ${diskPath} did not finish; resume it first`);
    }
    // Written under a temporary name and renamed: a crash never leaves a half-written journal.
    await removeDeadTemps(path);
    const tmp = `${path}.${process.pid}.tmp`;
    const w = await open(tmp, 'w', 0o600);
    try {
      await writeFully(w, area, 0);
      await w.sync();
    } finally {
      await w.close();
    }
    await rename(tmp, path);
    const fh = await open(path, 'r+');
    await fsyncDir(dirname(path));
    return new Journal(path, fh, header, null, SLOT_B);
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
      if (bytesRead < 12 || !area.subarray(0, 8).equals(MAGIC)) throw bad('wrong magic or truncated');
      const n = area.readUInt32LE(8);
      if (n > HEADER_AREA - 12 - 32) throw bad('header length out of range');
      const json = area.subarray(12, 12 + n);
      if (!sha256(json).equals(area.subarray(12 + n, 12 + n + 32))) throw bad('header checksum mismatch');
      let header: JournalHeader;
      try {
        header = JSON.parse(json.toString('utf8')) as JournalHeader;
      } catch {
        throw bad('header is not JSON');
      }
      if (header.version !== 1 || !Number.isSafeInteger(header.chunkSize) || header.chunkSize <= 0 || header.chunkSize > MAX_CHUNK) {
        throw bad('unknown version or chunk size');
      }
      const a = parseSlot(area, SLOT_A);
      const b = parseSlot(area, SLOT_B);
      let state: JournalState | null = null;
      let slot = SLOT_B;
      if (a && (!b || a.seq > b.seq)) {
        state = a;
        slot = SLOT_A;
      } else if (b) {
        state = b;
        slot = SLOT_B;
      }
      return new Journal(path, fh, header, state, slot);
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
    sha256(buf.subarray(0, 68)).copy(buf, 68);
    await writeFully(this.#fh, buf, slot);
    await this.#fh.sync();
    this.#slot = slot;
    this.#state = { seq, chunk, status, offset, length, copyHash };
  }

  async close(): Promise<void> {
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

/** Remove `<journal>.<pid>.tmp` files of processes that died while creating a journal. */
async function removeDeadTemps(path: string): Promise<void> {
  const prefix = `${basename(path)}.`;
  for (const f of await readdir(dirname(path)).catch(() => [] as string[])) {
    const m = f.startsWith(prefix) ? /^(\d+)\.tmp$/.exec(f.slice(prefix.length)) : null;
    if (m && !pidAlive(Number(m[1]))) await unlink(join(dirname(path), f)).catch(() => undefined);
  }
}

function parseSlot(area: Buffer, at: number): JournalState | null {
  const buf = area.subarray(at, at + SLOT_SIZE);
  if (buf.length < SLOT_SIZE || !buf.subarray(0, 8).equals(STATE_MAGIC)) return null;
  if (!sha256(buf.subarray(0, 68)).equals(buf.subarray(68, 100))) return null;
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
