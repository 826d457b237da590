/**
 * Atomic output. A new image is written into a staging folder inside the destination folder:
 *
 *     <dir>/.<name>.vmseal-tmp-<pid>-<random>/
 *         owner.json       {"pid":…, "host":…, "started":…}         who is writing here
 *         <name>           the descriptor (or the only file of a monolithic disk / raw image)
 *         <name-extents>   extent files, with the names the descriptor gives them
 *         commit.json      {"descriptor":"<name>","files":[…],"remove":[…]}   only once the commit starts
 *         keys.json        [{"providerId":…,"keyId":…}, …]   new KEKs the job made (job-keys.ts)
 *
 * Extent files keep their final names (the descriptor refers to them by name), so the commit is
 * renames only: every file is fsynced, commit.json is written and fsynced (from here on the commit
 * always completes), the extent files are renamed into <dir>, the descriptor last, <dir> is
 * fsynced, files of a replaced disk that the new one does not reuse are removed, and the staging
 * folder goes. Until the descriptor's rename nothing exists under the final name.
 *
 * The job holds the staging folder's NAME reserved (src/util/name-lock.ts: a kernel lock that ends
 * with the process) from before mkdir until the folder is gone. A staging folder whose name can be
 * reserved is therefore a dead job's, whatever its pid says (a zombie or a recycled pid cannot keep
 * it alive, and a live job in this very process still holds it). The next job on the same name
 * (and resumeDisk) handles it: without commit.json it is removed, after the keys listed in
 * keys.json are removed from their providers (a list whose provider this job cannot reach is kept,
 * with the folder, for a later job that can); with one, the commit is rolled forward (the staged
 * files are complete and fsynced, and the keys lock the new disk), so a crash during a commit never
 * leaves a mix of old and new files. owner.json only tells a human who was writing.
 *
 * A single-file output (monolithicSparse, streamOptimized, a raw image) that replaces nothing else
 * and made no key needs no commit record: its commit is ONE rename, which is atomic by itself. The
 * file is fsynced, renamed over the final name, <dir> is fsynced, and the staging folder goes. A
 * crash before the rename leaves a staging folder without commit.json (removed by the next job,
 * the output absent); after it, the output is complete (its data was durable before the rename)
 * and what is left of the folder holds no key. With keys.json the record is still written: after
 * the rename the keys lock the new disk, and a folder without commit.json would have them removed.
 * This saves a batch of small images the record's write and fsync, the staging folder's fsync and
 * the re-fsync of a file the writer has just synced (see `synced`).
 */
import { chmod, open, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { hostName } from '../util/host-name.js';
import { randomBytes } from 'node:crypto';
import { PipelineError } from './errors.js';
import { NameReservations } from './lock.js';
import { fsyncDir } from '../util/atomic-file.js';
import { FolderCalls, folderFacts, type FolderFacts } from '../util/inline-fs.js';
import type { KeyProvider, KeyRef } from '../keys/index.js';
import { discardJobKeys } from './job-keys.js';

const STAGE_INFIX = '.vmseal-tmp-';
const OWNER = 'owner.json';
const COMMIT = 'commit.json';
const KEYS = 'keys.json';

/** Whether a folder entry is a staging folder (of the output `name`, when given): `.<name>.vmseal-tmp-…`. */
export function isStagingFolderName(entry: string, name?: string): boolean {
  return name === undefined ? entry.startsWith('.') && entry.includes(STAGE_INFIX) : entry.startsWith(`.${name}${STAGE_INFIX}`);
}

/** The keys listed in a staging folder (none if the list is absent or unreadable). */
export async function readKeyList(stageDir: string): Promise<KeyRef[]> {
  try {
    const list = JSON.parse(await readFile(join(stageDir, KEYS), 'utf8')) as unknown;
    if (!Array.isArray(list)) return [];
    return list.filter((k): k is KeyRef => k !== null && typeof k === 'object' && typeof k.providerId === 'string' && typeof k.keyId === 'string');
  } catch {
    return [];
  }
}

/** Replace the key list durably (an empty list removes the file). */
export async function writeKeyList(stageDir: string, keys: readonly KeyRef[]): Promise<void> {
  const file = join(stageDir, KEYS);
  if (keys.length === 0) {
    await unlink(file).catch(() => undefined);
    return;
  }
  await writeFile(file, JSON.stringify(keys) + '\n', { flush: true });
  await fsyncDir(stageDir);
}

/** Remove every entry of a folder except `keep`. */
async function removeAllBut(folder: string, keep: readonly string[]): Promise<void> {
  for (const entry of await readdir(folder).catch(() => [] as string[])) {
    if (!keep.includes(entry)) await rm(join(folder, entry), { recursive: true, force: true });
  }
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

// fsync of a folder (so renames in it are durable) is the util layer's; re-exported for the pipeline.
export { fsyncDir };

/**
 * Remove staging folders of `name` in `dir` left by jobs that died (rolling a half commit forward).
 * `listing`: the entries of `dir` as the caller listed them (a batch lists its output folder once
 * for all its images instead of once per image, which made a batch's cost grow with the square of
 * its size); without it the folder is listed here.
 * A folder is a dead job's when its name can be reserved; the files a roll-forward renames into
 * place are reserved too, so it never replaces a file another job holds. The keys a dead job created
 * are removed through `providers`; a folder whose keys cannot all be removed keeps its key list (and
 * only that) for a later job.
 */
export async function cleanStaleStages(
  dir: string,
  name: string,
  held?: NameReservations,
  providers: readonly KeyProvider[] = [],
  listing?: readonly string[],
): Promise<string[]> {
  const removed: string[] = [];
  let entries: readonly string[];
  try {
    entries = listing ?? (await readdir(dir));
  } catch {
    return removed;
  }
  const stale = entries.filter((e) => isStagingFolderName(e, name));
  if (stale.length === 0) return removed;
  // The caller's reservations when it has some (its own names never conflict with themselves).
  const names = held ?? new NameReservations();
  try {
    for (const entry of stale) {
      const stageDir = join(dir, entry);
      if (!names.tryReserveExclusive(stageDir)) continue; // its job is alive
      let commit: CommitRecord | undefined;
      try {
        commit = JSON.parse(await readFile(join(stageDir, COMMIT), 'utf8')) as CommitRecord;
      } catch {
        commit = undefined; // no commit had started: nothing outside the staging folder
      }
      if (commit) {
        await names.reserve(
          plainNames(commit.files).map((f) => join(dir, f)),
          'exclusive',
        );
        await finishCommit(dir, stageDir, commit);
      } else {
        const left = await discardJobKeys(await readKeyList(stageDir), providers);
        if (left.length > 0) {
          await writeKeyList(stageDir, left);
          await removeAllBut(stageDir, [OWNER, KEYS]);
          names.release(stageDir);
          continue;
        }
      }
      await rm(stageDir, { recursive: true, force: true });
      names.release(stageDir);
      removed.push(stageDir);
    }
  } finally {
    if (!held) names.close();
  }
  return removed;
}

/** Names that stay in the folder (a commit record is never trusted to name a path elsewhere). */
function plainNames(files: string[]): string[] {
  return files.filter((f) => typeof f === 'string' && f !== '' && !f.includes('/') && !f.includes('\\') && f !== '..' && f !== '.');
}

interface CommitRecord {
  descriptor: string;
  files: string[];
  remove: string[];
}

/** Steps after commit.json: renames (descriptor last), fsync of the folder, removal of replaced files. Idempotent. */
async function finishCommit(dir: string, stageDir: string, commit: CommitRecord): Promise<void> {
  const ordered = [...commit.files.filter((f) => f !== commit.descriptor), commit.descriptor];
  for (const f of ordered) {
    if (f.includes('/') || f.includes('\\') || f === '..') continue; // never trust a name to leave the folder
    if (await pathExists(join(stageDir, f))) await rename(join(stageDir, f), join(dir, f));
  }
  await fsyncDir(dir);
  for (const old of commit.remove) {
    if (old.includes('/') || commit.files.includes(old)) continue;
    await unlink(join(dir, old)).catch(() => undefined);
  }
}

export class StagedOutput {
  readonly finalPath: string;
  readonly dir: string;
  readonly name: string;
  readonly stageDir: string;
  /** Where the job creates the disk: the same name, inside the staging folder. */
  readonly stagePath: string;
  /** The output folder's statfs: memory-backed or not, and its free bytes when the stage was made. */
  readonly folder: FolderFacts;
  #done = false;

  readonly #names: NameReservations;
  /** Folder metadata calls, inline on a memory-backed folder (src/util/inline-fs.ts). */
  readonly #calls: FolderCalls;
  /** The staging folder as checkTargets listed it; the commit reuses that listing (nothing adds a file in between but recordKey, which drops it). */
  #listed: string[] | undefined;

  private constructor(finalPath: string, stageDir: string, names: NameReservations, folder: FolderFacts) {
    this.#names = names;
    this.folder = folder;
    this.#calls = new FolderCalls(folder.memoryBacked);
    this.finalPath = finalPath;
    this.dir = dirname(finalPath);
    this.name = basename(finalPath);
    this.stageDir = stageDir;
    this.stagePath = join(stageDir, this.name);
  }

  /**
   * Check the final name is free (unless force), clean stale stages of it, make the staging folder
   * with its name reserved in `names` (the job's reservations) until commit or discard. `folder`:
   * the output folder's statfs if the caller has it (else it is taken here).
   */
  static async prepare(
    output: string,
    opts: { force?: boolean; names: NameReservations; providers?: readonly KeyProvider[]; checked?: boolean; folder?: FolderFacts },
  ): Promise<StagedOutput> {
    const finalPath = resolve(output);
    const dir = dirname(finalPath);
    const name = basename(finalPath);
    // `checked`: the caller has done these three under the same reservations (checked the folder,
    // cleaned stale stages, found the final name free). Doing them twice would cost every image of a
    // batch two stats and a scan of the output folder, which grows with the batch.
    if (!opts.checked) {
      if (!(await pathExists(dir))) throw new PipelineError('ERR_INVALID_ARGUMENT', `cannot write ${finalPath}: the folder ${dir} does not exist`);
      await cleanStaleStages(dir, name, opts.names, opts.providers);
      if (!opts.force && (await pathExists(finalPath))) {
        throw new PipelineError('ERR_OUTPUT_EXISTS', `${finalPath} exists; give another output name or force to replace it`);
      }
    }
    const folder = opts.folder ?? (await folderFacts(dir));
    const calls = new FolderCalls(folder.memoryBacked);
    const stageDir = join(dir, `.${name}${STAGE_INFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
    // Reserved before it exists: a cleaner never sees this folder without its owner's lock.
    await opts.names.reserve([stageDir], 'exclusive');
    try {
      await calls.mkdir(stageDir, 0o700);
      await calls.writeFile(join(stageDir, OWNER), JSON.stringify({ pid: process.pid, host: hostName(), started: new Date().toISOString() }) + '\n');
    } catch (err) {
      await rm(stageDir, { recursive: true, force: true });
      opts.names.release(stageDir);
      throw err;
    }
    return new StagedOutput(finalPath, stageDir, opts.names, folder);
  }

  /** Files of the staged disk (names only). */
  async files(): Promise<string[]> {
    return (await this.#calls.readdir(this.stageDir)).filter((f) => f !== OWNER && f !== COMMIT && f !== KEYS);
  }

  /** List a key the job just created, durably, before it is used (job-keys.ts). */
  async recordKey(ref: KeyRef): Promise<void> {
    this.#listed = undefined;
    await writeKeyList(this.stageDir, [...(await readKeyList(this.stageDir)), { providerId: ref.providerId, keyId: ref.keyId }]);
  }

  /**
   * Refuse final names that exist (unless force) or that are files of the source (`protect`).
   * Call once the staged disk's files exist.
   */
  async checkTargets(opts: { force?: boolean; protect?: string[]; planned?: string[] } = {}): Promise<void> {
    const protect = new Set((opts.protect ?? []).map((p) => resolve(p)));
    const planned = opts.planned && new Set(opts.planned.map((p) => resolve(p)));
    const entries = await this.#calls.readdir(this.stageDir);
    for (const f of entries.filter((e) => e !== OWNER && e !== COMMIT && e !== KEYS)) {
      const target = join(this.dir, f);
      // Only names reserved beforehand may be committed: anything else could be another job's file.
      if (planned && !planned.has(target)) throw new PipelineError('ERR_INVALID_ARGUMENT', `internal: the staged output has a file ${f} that was not reserved`);
      if (protect.has(target)) throw new PipelineError('ERR_SAME_FILE', `the output file ${target} would replace a file of the input`);
      if (!opts.force && (await this.#calls.exists(target))) {
        throw new PipelineError('ERR_OUTPUT_EXISTS', `${target} exists (a file the output needs); give another output name or force to replace it`);
      }
    }
    this.#listed = entries;
  }

  /**
   * Make the staged disk the final one. `replacing`: the files of the disk now under the final name
   * (force, or a rekey that replaces its input). With `deleteFirst` (force over an unrelated disk)
   * the old descriptor is deleted before any rename, so a crash never shows an old descriptor over
   * new extents; without it (rekey) the caller has marked the old descriptor beforehand.
   * `mode`: permission bits given to every staged file before anything is renamed (chmod, so the
   * umask does not apply). Until then the files are only reachable through the 0700 staging folder.
   * `synced`: the caller has fsynced every staged file and closed it (a writer's flush), so without
   * `mode` they are not fsynced again (a chmod is metadata that must be made durable: then they are).
   */
  async commit(
    opts: { replacing?: string[]; deleteFirst?: boolean; beforeRenames?: () => Promise<void>; mode?: number; synced?: boolean } = {},
  ): Promise<void> {
    // One listing gives both the disk's files and whether the job listed a key (keys.json); the one
    // checkTargets made is still true when no key was recorded since (then keys.json is not there).
    const entries = this.#listed ?? (await this.#calls.readdir(this.stageDir));
    const files = entries.filter((f) => f !== OWNER && f !== COMMIT && f !== KEYS);
    if (!files.includes(this.name)) throw new PipelineError('ERR_INVALID_ARGUMENT', `internal: staged output ${this.stagePath} is missing`);
    for (const f of files) {
      if (opts.mode !== undefined) await chmod(join(this.stageDir, f), opts.mode);
      if (opts.mode !== undefined || !opts.synced) await fsyncPath(join(this.stageDir, f));
    }
    const remove = (opts.replacing ?? [])
      .map((p) => resolve(p))
      .filter((p) => dirname(p) === this.dir)
      .map((p) => basename(p))
      .filter((n) => !files.includes(n));
    if (files.length === 1 && remove.length === 0 && opts.beforeRenames === undefined && !entries.includes(KEYS)) {
      await this.#commitOneFile();
      return;
    }
    const record: CommitRecord = { descriptor: this.name, files, remove };
    await writeFile(join(this.stageDir, COMMIT), JSON.stringify(record) + '\n', { flush: true });
    await fsyncDir(this.stageDir);
    // From here on the commit must complete (or be rolled forward later): never discard the stage.
    this.#done = true;
    await opts.beforeRenames?.();
    if (opts.deleteFirst) await unlink(this.finalPath).catch((err) => (err.code === 'ENOENT' ? undefined : Promise.reject(err)));
    await finishCommit(this.dir, this.stageDir, record);
    await rm(this.stageDir, { recursive: true, force: true });
    this.#names.release(this.stageDir);
  }

  /**
   * The commit of a lone file with no key listed (see the header): one rename over the final name
   * (atomic: the old file or the new one, never neither), the folder fsynced, the staging folder removed.
   */
  async #commitOneFile(): Promise<void> {
    this.#done = true;
    await this.#calls.rename(this.stagePath, this.finalPath);
    await this.#calls.fsyncDir(this.dir);
    // Only owner.json is left: two calls instead of a recursive removal's scan (a stranger's file falls back to it).
    await this.#calls.unlink(join(this.stageDir, OWNER)).catch(() => undefined);
    await this.#calls.rmdir(this.stageDir).catch(() => rm(this.stageDir, { recursive: true, force: true }));
    this.#names.release(this.stageDir);
  }

  /**
   * Remove the staging folder and everything in it (after a failure or cancellation), and the keys the
   * job created (through `providers`). Keys that cannot be removed stay listed in the folder, which is
   * then kept with nothing else in it, for the next job on this name to remove.
   */
  async discard(providers: readonly KeyProvider[] = []): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    const left = await discardJobKeys(await readKeyList(this.stageDir), providers);
    if (left.length > 0) {
      await writeKeyList(this.stageDir, left);
      await removeAllBut(this.stageDir, [OWNER, KEYS]);
    } else {
      await rm(this.stageDir, { recursive: true, force: true });
    }
    this.#names.release(this.stageDir);
  }
}
