/**
 * The staging folders of `backup restore`: `<folder of OUT>/.vmseal-restore-<12 hex digits>/`, one
 * per running restore, holding the disk under OUT's file name until its files are moved next to OUT.
 *
 * A restore holds its staging folder's NAME reserved (src/util/name-lock.ts, through the job's
 * NameReservations: a kernel lock that ends with the process, however it ends) from before mkdir
 * until the folder is gone, as the pipeline does for its own staging folders (pipeline/staging.ts).
 * A staging folder whose name can be reserved is therefore a dead restore's (SIGKILL, power loss),
 * whatever else is in it; one whose name is held belongs to a restore still writing and is left
 * alone. A dead restore's folder holds only a copy of point data (ciphertext, no key, nothing
 * outside the folder refers to it), so it is simply removed: the next restore into the same folder
 * does that, before making its own.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { NameReservations } from '../pipeline/lock.js';

const PREFIX = '.vmseal-restore-';
/** Exactly the names restores make: a user's file that merely starts like one is never touched. */
const STAGE_NAME = /^\.vmseal-restore-[0-9a-f]{12}$/;

/** Make a new staging folder in `dir` (mode 0700), its name reserved in `names` before it exists. */
export async function makeRestoreStage(dir: string, names: NameReservations): Promise<string> {
  const stage = join(dir, `${PREFIX}${randomBytes(6).toString('hex')}`);
  // Reserved first: a cleaner never sees this folder without its owner's lock.
  await names.reserve([stage], 'exclusive');
  try {
    await mkdir(stage, { mode: 0o700 });
  } catch (err) {
    names.release(stage);
    throw err;
  }
  return stage;
}

/** Remove the folder made by makeRestoreStage and drop its reservation. */
export async function removeRestoreStage(stage: string, names: NameReservations): Promise<void> {
  await rm(stage, { recursive: true, force: true });
  names.release(stage);
}

/**
 * Remove the staging folders in `dir` of restores that died (their name is not held by any live
 * process). `names`: the job's reservations (a stage of this very job is held, so never removed).
 * Returns the folders removed.
 */
export async function cleanStaleRestoreStages(dir: string, names: NameReservations): Promise<string[]> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch {
    return []; // no folder: nothing to clean (the restore reports the folder itself)
  }
  const removed: string[] = [];
  for (const entry of entries) {
    if (!STAGE_NAME.test(entry)) continue;
    const stage = join(dir, entry);
    if (!names.tryReserveExclusive(stage)) continue; // its restore is alive
    await removeRestoreStage(stage, names);
    removed.push(stage);
  }
  return removed;
}
