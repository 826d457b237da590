/**
 * The native data path of a restore to a new flat disk (restore.ts): runs of up to NATIVE_RUN chunks that
 * lie in one file of the staged disk (cut by chunk-runs.ts), each one job of the addon (native/backup_chunks.cc,
 * restoreChunks): every chunk file read, its length and SHA-256 checked before any of it is
 * written, then its non-zero 64 KiB blocks written at its place in the file (zero blocks stay host
 * holes, as putChunkKeepingHoles(…, 'skip') leaves them). No chunk byte crosses into JavaScript.
 */
import { nativeBackupError, type NativeBackup } from '../util/native-backup.js';
import type { ChunkRun } from './chunk-runs.js';
import { FLAT_BLOCK } from './chunk-blocks.js';
import { BackupError } from './errors.js';
import type { Repository } from './repository.js';

/** Restore one native run; returns the bytes written. A missing, resized or altered chunk is ERR_BACKUP_CHUNK. */
export async function restoreRun(native: NativeBackup, repo: Repository, run: ChunkRun<[number, string]>): Promise<number> {
  const hashes = Buffer.from(run.chunks.map(([, h]) => h).join(''), 'hex');
  let r: Awaited<ReturnType<NativeBackup['restoreChunks']>>;
  try {
    r = await native.restoreChunks(
      run.fd!,
      run.positions,
      run.lengths,
      run.chunks.map(([, h]) => repo.chunkPath(h)),
      hashes,
      FLAT_BLOCK,
    );
  } catch (err) {
    throw nativeBackupError(err);
  }
  if (r.failed < 0) return r.bytes;
  const hash = run.chunks[r.failed]![1];
  const file = repo.chunkPath(hash);
  const expected = run.lengths[r.failed]!;
  // The words of Repository.readChunk, which the VMDK-layer path uses.
  if (r.reason === 'missing') throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} is missing from ${repo.path}`);
  if (r.reason === 'type') throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} is not a regular file (${file})`);
  if (r.reason === 'size')
    throw new BackupError(
      'ERR_BACKUP_CHUNK',
      `chunk ${hash} has ${r.size > expected ? `more than ${expected}` : r.size} bytes where ${expected} are expected (${file})`,
    );
  throw new BackupError('ERR_BACKUP_CHUNK', `chunk ${hash} does not hash to its name: its content was altered (${file})`);
}
