/**
 * A backup repository: a folder of content-addressed ciphertext chunks and point manifests.
 *
 *     REPO/vmseal-backup.json     the format file (below); written last by init, so its presence marks a complete repository
 *     REPO/chunks/<xx>/<sha256>   one file per distinct chunk, named by the lowercase hex SHA-256 of its bytes;
 *                                 <xx> = the hash's first byte (256 folders, made by init)
 *     REPO/points/<point id>.json one manifest per backup point (manifest.ts)
 *     REPO/points-index.json      a cache of each point's history, name, lineage line and list summary (point-index.ts)
 *     REPO/points-index.lock      the record file of the index lock, present while a writer of the index holds it
 *     REPO/lock                   the record file of the repository lock (src/util/lock.ts), present while held
 *
 * Format file: {"format":"vmseal-backup","version":1,"id":<32 hex>,"chunkSize":1048576,"hash":"sha256","created":<ISO time>}.
 *
 * Every chunk and manifest is written whole or not at all (src/util/atomic-file.ts: temp file,
 * fsync, link or rename, folder fsync); a leftover `<name>.tmp-<pid>-<random>` of a killed writer is
 * never read and is removed by prune. A chunk that exists is never rewritten: same name, same bytes.
 *
 * Lock: create, restore and verify hold it shared, prune exclusive — prune deletes a chunk only when
 * no manifest names it and no backup that may count on it (having found it present) is running.
 */
import { randomBytes, createHash } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createFileAtomic, fsyncDir, writeFileAtomic } from '../util/atomic-file.js';
import { readFully } from '../util/file-io.js';
import { runWorkers } from '../util/run-workers.js';
import { acquireFileLock, FileLockError, describeHolder, type FileLockHandle } from '../util/lock.js';
import { BackupError } from './errors.js';
import { expected } from '../errors.js';

export const REPOSITORY_FORMAT_FILE = 'vmseal-backup.json';
export const REPOSITORY_FORMAT = 'vmseal-backup';
export const REPOSITORY_VERSION = 1;
/** Bytes of the virtual disk per chunk: a multiple of every data-unit size (512, 4096) and grain size (≤ 1 MiB). */
export const CHUNK_SIZE = 1 << 20;
const FORMAT_FILE_MAX = 64 * 1024;
/** Folder fsyncs in flight at once: libuv's pool has 4 threads; more would only queue. */
const SYNC_IN_FLIGHT = 4;
const HASH_RE = /^[0-9a-f]{64}$/;
/** Point ids: creation time (UTC, milliseconds) then 8 random hex digits, so names sort by time. */
export const POINT_ID_RE = /^[0-9]{8}T[0-9]{9}Z-[0-9a-f]{8}$/;

export interface RepositoryInfo {
  path: string;
  id: string;
  chunkSize: number;
}

export function isChunkHash(value: unknown): value is string {
  return typeof value === 'string' && HASH_RE.test(value);
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

export function newPointId(now: Date): string {
  const t = now.toISOString().replace(/[-:.]/g, ''); // 20261205T091500123Z
  return `${t}-${randomBytes(4).toString('hex')}`;
}

function notRepository(path: string, why: string, cause?: unknown): BackupError {
  return new BackupError('ERR_BACKUP_REPOSITORY', `${path} is not a vmseal backup repository: ${why}`, cause === undefined ? undefined : { cause });
}

/** Create an empty repository at `path` (a missing or empty folder). Returns its id. */
export async function initRepository(path: string): Promise<RepositoryInfo> {
  if (typeof path !== 'string' || path === '' || path.includes('\0'))
    throw new BackupError('ERR_INVALID_ARGUMENT', expected('a folder path', 'repository', path));
  const abs = resolve(path);
  await mkdir(abs, { recursive: true, mode: 0o700 });
  const present = await readdir(abs);
  if (present.length > 0) {
    const what = present.includes(REPOSITORY_FORMAT_FILE) ? 'it is already a backup repository' : `it is not empty (${present.length} entries)`;
    throw new BackupError('ERR_BACKUP_REPOSITORY', `cannot make a backup repository in ${abs}: ${what}; give a new or empty folder`);
  }
  const chunks = join(abs, 'chunks');
  await mkdir(chunks, { mode: 0o700 });
  for (let b = 0; b < 256; b++) await mkdir(join(chunks, b.toString(16).padStart(2, '0')), { mode: 0o700 });
  await fsyncDir(chunks);
  await mkdir(join(abs, 'points'), { mode: 0o700 });
  await fsyncDir(abs);
  const id = randomBytes(16).toString('hex');
  const format = { format: REPOSITORY_FORMAT, version: REPOSITORY_VERSION, id, chunkSize: CHUNK_SIZE, hash: 'sha256', created: new Date().toISOString() };
  await writeFileAtomic(join(abs, REPOSITORY_FORMAT_FILE), Buffer.from(JSON.stringify(format, null, 2) + '\n'), 0o600);
  return { path: abs, id, chunkSize: CHUNK_SIZE };
}

/** Read and check a repository's format file. */
export async function openRepository(path: string): Promise<Repository> {
  if (typeof path !== 'string' || path === '' || path.includes('\0'))
    throw new BackupError('ERR_INVALID_ARGUMENT', expected('a folder path', 'repository', path));
  const abs = resolve(path);
  const file = join(abs, REPOSITORY_FORMAT_FILE);
  let text: string;
  try {
    const s = await stat(file);
    if (!s.isFile() || s.size > FORMAT_FILE_MAX) throw notRepository(abs, `${REPOSITORY_FORMAT_FILE} is not a small file`);
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof BackupError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw notRepository(abs, `it has no ${REPOSITORY_FORMAT_FILE} (make one with \`vmseal backup init\`)`, err);
    throw err;
  }
  let f: Record<string, unknown>;
  try {
    f = JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw notRepository(abs, `${REPOSITORY_FORMAT_FILE} is not JSON`, err);
  }
  if (f === null || typeof f !== 'object' || f.format !== REPOSITORY_FORMAT)
    throw notRepository(abs, `${REPOSITORY_FORMAT_FILE} has no "format": "${REPOSITORY_FORMAT}"`);
  if (f.version !== REPOSITORY_VERSION) {
    throw new BackupError(
      'ERR_BACKUP_REPOSITORY',
      `the backup repository ${abs} has format version ${JSON.stringify(f.version)}; this vmseal reads version ${REPOSITORY_VERSION} (use a newer vmseal)`,
    );
  }
  if (typeof f.id !== 'string' || !/^[0-9a-f]{32}$/.test(f.id)) throw notRepository(abs, `${REPOSITORY_FORMAT_FILE} has no valid "id"`);
  if (f.chunkSize !== CHUNK_SIZE || f.hash !== 'sha256')
    throw notRepository(abs, `${REPOSITORY_FORMAT_FILE} names a chunk size or hash this vmseal does not use`);
  return new Repository({ path: abs, id: f.id, chunkSize: CHUNK_SIZE });
}

export class Repository implements RepositoryInfo {
  readonly path: string;
  readonly id: string;
  readonly chunkSize: number;

  constructor(info: RepositoryInfo) {
    this.path = info.path;
    this.id = info.id;
    this.chunkSize = info.chunkSize;
  }

  get lockPath(): string {
    return join(this.path, 'lock');
  }

  /** Take the repository lock: shared for create/restore/verify, exclusive for prune. */
  async lock(mode: 'shared' | 'exclusive', operation: string, waitMs = 0): Promise<FileLockHandle> {
    try {
      return await acquireFileLock(this.lockPath, { mode, waitMs, record: { operation: `backup ${operation}`, tool: 'vmseal' } });
    } catch (err) {
      if (err instanceof FileLockError && err.code === 'ERR_LOCK_BUSY') {
        const who = err.holder ? describeHolder(err.holder) : 'another process';
        throw new BackupError('ERR_BACKUP_BUSY', `the backup repository ${this.path} is in use by ${who} (lock file ${this.lockPath})`, { cause: err });
      }
      throw err;
    }
  }

  /** The folder of chunk fan-out folders: a chunk is `<chunkRoot>/<first two hex digits>/<hash>`. */
  get chunkRoot(): string {
    return join(this.path, 'chunks');
  }

  chunkPath(hash: string): string {
    return join(this.chunkRoot, hash.slice(0, 2), hash);
  }

  async hasChunk(hash: string): Promise<boolean> {
    try {
      return (await stat(this.chunkPath(hash))).isFile();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /**
   * Store `data` under `hash` (its SHA-256) unless present; true when this call wrote it. The file is
   * complete and fsynced, but its folder entry is durable only after syncChunkFolders(): a writer
   * calls it before a manifest names the chunk (one folder fsync per backup, not one per chunk).
   */
  async putChunk(hash: string, data: Uint8Array): Promise<boolean> {
    return createFileAtomic(this.chunkPath(hash), data, 0o600, { syncFolder: false });
  }

  /**
   * Read a chunk into `target` (its expected length) and check that it hashes to `hash`: a missing,
   * short, long or altered chunk is ERR_BACKUP_CHUNK.
   */
  async readChunk(hash: string, target: Buffer): Promise<void> {
    const file = this.chunkPath(hash);
    let fh;
    try {
      // O_NONBLOCK: a FIFO at a chunk's name must not hang the open; it is refused below as no chunk.
      fh = await open(file, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} is missing from ${this.path}`, { cause: err });
      throw err;
    }
    try {
      const st = await fh.stat();
      if (!st.isFile()) throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} is not a regular file (${file})`);
      const size = st.size;
      if (size !== target.length) throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} has ${size} bytes where ${target.length} are expected (${file})`);
      const n = await readFully(fh, target, 0);
      if (n !== target.length) throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} is shorter than ${target.length} bytes (${file})`);
    } finally {
      await fh.close();
    }
    if (sha256Hex(target) !== hash) throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} does not hash to its name: its content was altered (${file})`);
  }

  /** SHA-256 and size of a stored chunk file (null when it is missing); reads at most one chunk and a byte. */
  async hashChunkFile(hash: string): Promise<{ sha256: string; size: number } | null> {
    let fh;
    try {
      fh = await open(this.chunkPath(hash), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const buf = Buffer.allocUnsafe(this.chunkSize + 1);
      const n = await readFully(fh, buf, 0);
      return { sha256: sha256Hex(buf.subarray(0, n)), size: n };
    } finally {
      await fh.close();
    }
  }

  /** Every stored chunk's hash, and the leftover temp files of killed writers (as paths). */
  async scanChunks(): Promise<{ hashes: string[]; leftovers: string[] }> {
    const hashes: string[] = [];
    const leftovers: string[] = [];
    const root = join(this.path, 'chunks');
    for (const fan of await readdir(root)) {
      if (!/^[0-9a-f]{2}$/.test(fan)) continue;
      for (const name of await readdir(join(root, fan))) {
        if (HASH_RE.test(name) && name.startsWith(fan)) hashes.push(name);
        else if (/^[0-9a-f]{64}\.tmp-/.test(name)) leftovers.push(join(root, fan, name));
      }
    }
    return { hashes, leftovers };
  }

  /** Size of a stored chunk file, 0 when it is missing. */
  async chunkFileSize(hash: string): Promise<number> {
    return stat(this.chunkPath(hash)).then(
      (s) => s.size,
      () => 0,
    );
  }

  async removeChunk(hash: string): Promise<void> {
    await unlink(this.chunkPath(hash)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async removeFiles(paths: string[]): Promise<void> {
    for (const p of paths) await rm(p, { force: true });
  }

  /**
   * fsync chunk fan-out folders (the 2-digit names given, or all): new chunks before a manifest names
   * them, deletions before prune reports. SYNC_IN_FLIGHT at once: each is three calls on libuv's pool
   * (open, fsync, close), so one after the other a backup touching 20 folders waited for 60 hand-offs
   * in a row, and a full one (all 256) for 768; and concurrent folder fsyncs on a journaling file
   * system can share one journal commit.
   */
  async syncChunkFolders(fans?: Iterable<string>): Promise<void> {
    const root = join(this.path, 'chunks');
    const list = (fans ? [...fans] : await readdir(root)).filter((fan) => /^[0-9a-f]{2}$/.test(fan));
    let next = 0;
    await runWorkers(Math.min(SYNC_IN_FLIGHT, list.length), async (stopped) => {
      while (!stopped() && next < list.length) await fsyncDir(join(root, list[next++]!));
    });
  }

  pointPath(id: string): string {
    return join(this.path, 'points', `${id}.json`);
  }

  /** Ids of every point, oldest first (ids sort by time); other files in points/ are ignored. */
  async pointIds(): Promise<string[]> {
    const names = await readdir(join(this.path, 'points'));
    return names
      .filter((n) => n.endsWith('.json') && POINT_ID_RE.test(n.slice(0, -5)))
      .map((n) => n.slice(0, -5))
      .sort();
  }

  async readPointText(id: string): Promise<string> {
    try {
      return await readFile(this.pointPath(id), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw new BackupError('ERR_BACKUP_NO_POINT', `the backup repository ${this.path} has no point ${id}`, { cause: err });
      throw err;
    }
  }

  async writePointText(id: string, text: string): Promise<void> {
    await writeFileAtomic(this.pointPath(id), Buffer.from(text, 'utf8'), 0o600);
  }

  async removePoint(id: string): Promise<void> {
    await unlink(this.pointPath(id)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  async syncPoints(): Promise<void> {
    await fsyncDir(join(this.path, 'points'));
  }
}
