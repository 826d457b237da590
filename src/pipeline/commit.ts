/**
 * Snapshot commit: merge the top of a chain (a child) into its parent, then remove the child; the
 * parent becomes the top (writable again). Every grain the child holds (allocated or zeroed) is
 * copied into the parent at the same offset as stored bytes: the layers of an encrypted chain share
 * one DEK (docs/format.md, "Snapshot chains"), so ciphertext moves without being decrypted.
 *
 * Order (each step durable before the next; commit-journal.ts has the journal's format):
 *   1. the journal `<child>.vmseal-journal` is written, with the parent's descriptor before, during
 *      and after the commit (and, for an encrypted chain, its final data check: unit 0 of the chain);
 *   2. the parent's files get their write bits back and its descriptor "during" is written: it carries
 *      `encryption.job = "snapshot-commit"`, so the half-merged parent is refused by every opener
 *      (ERR_INTERRUPTED_JOB) — the child is refused because of its journal;
 *   3. the child's grains are copied into the parent, flushed;
 *   4. the parent's descriptor "final" is written (no job line, a new CID, the new data check);
 *   5. the child's files are removed, then the journal.
 * Resume repeats from step 2 (step 3 only while the child's descriptor file exists): every step is
 * idempotent, since the child never changes — and from step 5 once the parent's descriptor is the
 * final one, since the parent, whole, may have been opened and written since (see isFinal).
 */
import { chmod, readdir, realpath, stat, unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { ChainDisk, Descriptor, JOB_LINE, openDisk as openVmdk, ownRanges, type VirtualDisk } from '../vmdk/index.js';
import {
  DiskError,
  LINE,
  dataCheckOf,
  encryptionLines,
  encryptionOf,
  openWithDek,
  unlockDek,
  unlockInner,
  type EncryptionParams,
  type UnlockOptions,
} from '../disk/for-pipeline.js';
import { isTempNameOf } from '../util/atomic-file.js';
import { isReadOnlySubformat, readOnlySubformatError } from '../vmdk/read-only-formats.js';
import { expected } from '../errors.js';
import { COMMIT_OPERATION, isCommitJournal, readCommitJournal, removeCommitJournal, writeCommitJournal, type CommitHeader } from './commit-journal.js';
import { locateDescriptor, readDescriptorBytes, removeStaleDescriptorTemps, withoutCid, writeDescriptor } from './descriptor-io.js';
import { PipelineError, abortError } from './errors.js';
import { journalPathOf } from './journal.js';
import { acquireLock, NameReservations } from './lock.js';
import { CHANGE_BITMAP_SUFFIX, realDiskPath } from './paths.js';
import { checkPath, type UnlockOptions as JobUnlockOptions } from './options.js';
import { ProgressTracker, type ProgressListener } from './progress.js';
import { fsyncDir, fsyncPath, pathExists } from './staging.js';

/** Bytes copied per read and write: the pipeline's chunk size. */
const CHUNK = 4 << 20;

export interface CommitSnapshotOptions {
  /** Unlocks an encrypted chain (needed to check its layers and to seal the journal); ignored for a plain one. */
  keys?: JobUnlockOptions;
  signal?: AbortSignal;
  onProgress?: ProgressListener;
}

export interface CommitResult {
  /** The parent, now the top of the chain (the disk to write from now on). */
  top: string;
  /** The child that was merged and removed. */
  removed: string;
  /** Bytes of the virtual disk copied from the child into the parent. */
  bytesMoved: number;
  seconds: number;
  encrypted: boolean;
  /** True when this call finished an interrupted commit. */
  resumed?: boolean;
}

/** The parent's path from the child's parentFileNameHint (relative to the child's folder, or absolute). */
function parentPath(top: string, hint: string): string {
  return isAbsolute(hint) ? resolve(hint) : resolve(dirname(top), hint);
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

function fromB64(text: string): Buffer {
  return Buffer.from(text, 'base64');
}

/** A fresh CID (8 hex digits, as the VMDK layer draws them): never ffffffff, fffffffe or the old one. */
function freshCid(old: string | undefined): string {
  for (;;) {
    const cid = randomBytes(4).toString('hex');
    if (cid !== 'ffffffff' && cid !== 'fffffffe' && cid !== old?.toLowerCase()) return cid;
  }
}

/** Give `files` their write bits back (from their read bits: createSnapshot cleared them). */
async function makeWritable(files: string[]): Promise<void> {
  for (const f of files) {
    const mode = (await stat(f)).mode & 0o777;
    const w = mode | ((mode & 0o444) >> 1);
    if (w !== mode) {
      await chmod(f, w);
      await fsyncPath(f); // the mode is durable before the job goes on (and before its journal is removed)
    }
  }
}

/** Most .vmdk files looked at for other children of the parent (a bound, not a target). */
const MAX_SCANNED = 10_000;

/**
 * Other snapshots made on `parent` besides `top`: VMDK files in the parent's and the child's folders
 * whose parentFileNameHint names the parent. Committing into a parent changes its content and CID,
 * which would make them unreadable (their parentCID no longer matches): the commit refuses instead.
 */
async function otherChildren(parent: string, top: string): Promise<string[]> {
  const target = await realpath(parent);
  const found: string[] = [];
  let scanned = 0;
  for (const dir of new Set([dirname(parent), dirname(top)])) {
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const file = join(dir, name);
      if (!name.toLowerCase().endsWith('.vmdk') || file === top || file === parent || ++scanned > MAX_SCANNED) continue;
      const layer = await openVmdk(file, { readOnly: true, allowEncrypted: true, layerOnly: true }).catch(() => undefined);
      if (!layer) continue;
      const hint = layer.descriptor?.get('parentFileNameHint');
      await layer.close();
      if (hint === undefined) continue;
      const named = await realpath(parentPath(file, hint)).catch(() => undefined);
      if (named === target) found.push(file);
    }
  }
  return found;
}

/** Remove temp files a killed writer of the journal left beside it. */
async function removeJournalTemps(top: string): Promise<void> {
  const journal = journalPathOf(top);
  for (const f of await readdir(dirname(top)).catch(() => [] as string[])) {
    if (isTempNameOf(journal, f)) await unlink(join(dirname(top), f)).catch(() => undefined);
  }
}

interface Plan {
  header: CommitHeader;
  parent: string;
  /** The chain's DEK (encrypted chains): seals the journal; wiped by the caller. */
  dek: Buffer | null;
}

/**
 * How the chain is unlocked: with key options (the CLI), or with its DEK already unlocked (a server
 * committing the chain it serves unlocks it before holding writes back: no KDF or KMS round trip
 * while they wait). null: a plain chain.
 */
type ChainKey = { keys: UnlockOptions | undefined } | { dek: Buffer | null };

/** Open the chain ending at `top` with every check, refuse what cannot be committed, and make the journal's header. */
async function planCommit(top: string, key: ChainKey): Promise<Plan> {
  const chain = await openVmdk(top, { readOnly: true, allowEncrypted: true });
  let opened: { close(): Promise<void> } = chain;
  let dek: Buffer | null = null;
  try {
    if (!(chain instanceof ChainDisk)) {
      throw new PipelineError('ERR_NOT_A_SNAPSHOT', `${top} has no parent disk (a chain of one layer): there is nothing to commit it into`);
    }
    if (((await stat(top)).mode & 0o222) === 0) {
      throw new PipelineError(
        'ERR_SNAPSHOT_HAS_CHILDREN',
        `${top} is not the top of its chain: it has snapshots of its own (mode 0444); commit the newest one first (vmseal snapshot list shows the chain)`,
      );
    }
    const hint = chain.top.descriptor!.get('parentFileNameHint')!;
    const parentLayer = chain.layers()[1];
    const parent = parentLayer.path;
    // Before the journal or the parent's job line: vSphere's delta disks are neither written nor
    // removed by vmseal (a parent of them would be written, a top of them is vSphere's to consolidate).
    for (const layer of [chain.top, parentLayer]) {
      if (isReadOnlySubformat(layer.subformat)) throw readOnlySubformatError(layer.subformat, layer.path);
    }
    const siblings = await otherChildren(parent, top);
    if (siblings.length > 0) {
      throw new PipelineError(
        'ERR_SNAPSHOT_SIBLINGS',
        `${parent} has other snapshots besides ${top} (${siblings.slice(0, 3).join(', ')}${siblings.length > 3 ? ', …' : ''}): committing into it would make them unreadable. Remove them (or commit from a copy) first`,
      );
    }
    const before = await readDescriptorBytes(await locateDescriptor(parent));
    const during = Descriptor.parse(before, { file: parent });
    const final = during.clone();
    let to: EncryptionParams | null = null;
    const enc = encryptionOf(chain);
    if (enc) {
      if (enc.job !== undefined)
        throw new DiskError('ERR_INTERRUPTED_JOB', `${top} is in the middle of an interrupted ${enc.job} job; finish it first (vmseal resume)`);
      const given = 'dek' in key ? key.dek : undefined;
      const keys = 'keys' in key ? key.keys : undefined;
      if (!given && !keys)
        throw new DiskError('ERR_DISK_ENCRYPTED', `${top} is encrypted (${enc.params.cipher}); give keys (a key provider or passphrase) to commit it`);
      // Every check either way: authenticator, every layer, data check.
      const disk = given ? await openWithDek(chain, enc.params, given) : await unlockInner(chain, enc.params, keys!);
      opened = disk;
      // After the commit the parent holds what the chain reads now: its data check is unit 0 of the chain.
      const unit0 = await disk.read(0, enc.params.unitSize);
      const p = encryptionOf(parentLayer)!.params;
      dek = given ? Buffer.from(given) : await unlockDek(enc.params, chain.capacity, keys!, top);
      to = { ...p, dataCheck: dataCheckOf(dek, p.diskId, p.unitSize, unit0) };
      for (const [k, v] of encryptionLines(to)) final.set(k, v);
      during.set(JOB_LINE, COMMIT_OPERATION, { after: LINE.keySafe });
    } else {
      during.set(JOB_LINE, COMMIT_OPERATION);
    }
    final.set('CID', freshCid(final.get('CID')));
    return {
      parent,
      dek,
      header: {
        version: 1,
        operation: COMMIT_OPERATION,
        top: basename(top),
        topFiles: chain.top.files().map((f) => basename(f)),
        parent: hint,
        capacity: chain.capacity,
        to,
        started: new Date().toISOString(),
        descriptor: { before: b64(before), during: b64(during.toBuffer()), final: b64(final.toBuffer()) },
      },
    };
  } catch (err) {
    dek?.fill(0);
    throw err;
  } finally {
    await opened.close();
  }
}

/**
 * Merge the top of the chain `path` into its parent and remove it (see the file comment). Holds the
 * child's and the parent's vmseal locks (and qemu's) exclusively. A commit killed at any point is
 * finished by running it again or by resumeDisk(path); until then the chain is refused
 * (ERR_INTERRUPTED_JOB). Refused: a disk without a parent (ERR_NOT_A_SNAPSHOT), a layer with
 * children of its own (ERR_SNAPSHOT_HAS_CHILDREN).
 */
export async function commitSnapshot(path: string, options: CommitSnapshotOptions = {}): Promise<CommitResult> {
  const top = await realDiskPath(checkPath(path, 'path'));
  if (options === null || typeof options !== 'object') throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const keys = options.keys;
  if (keys !== undefined && (keys === null || typeof keys !== 'object')) {
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? }', 'keys', keys));
  }
  const started = performance.now();
  const lock = await acquireLock(top, 'snapshot commit');
  const names = new NameReservations();
  try {
    await names.reserve([journalPathOf(top)], 'exclusive');
    await removeJournalTemps(top);
    if (await pathExists(journalPathOf(top))) {
      if (await isCommitJournal(top)) return await resumeLocked(top, keys, options, names, started);
      throw new DiskError('ERR_INTERRUPTED_JOB', `${top} has an unfinished in-place job (journal ${journalPathOf(top)}); finish it first (vmseal resume)`);
    }
    const plan = await planCommit(top, { keys });
    try {
      return await withParentLock(plan.parent, names, () => startPlanned(top, plan, options, started));
    } finally {
      plan.dek?.fill(0);
    }
  } finally {
    names.close();
    await lock.release();
  }
}

/** Steps 1 to 5 of a planned commit; the caller holds both locks and the names of the journal and the parent's files. */
async function startPlanned(top: string, plan: Plan, options: CommitSnapshotOptions, started: number): Promise<CommitResult> {
  // Nothing may have changed the parent between the plan (under a shared lock) and now.
  const now = await readDescriptorBytes(await locateDescriptor(plan.parent));
  if (!now.equals(fromB64(plan.header.descriptor.before))) {
    throw new PipelineError('ERR_DISK_BUSY', `the parent ${plan.parent} of ${top} changed while the commit was being prepared; run it again`);
  }
  await writeCommitJournal(top, plan.header, plan.dek);
  return runCommit(top, plan.parent, plan.header, options, started, false);
}

/** Run `fn` holding the parent's lock and the names of its files exclusively. */
async function withParentLock<T>(parent: string, names: NameReservations, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(parent, 'snapshot commit (parent)');
  try {
    await reserveLayerNames(parent, names);
    return await fn();
  } finally {
    await lock.release();
  }
}

/** Reserve the names of the files of the layer `path` exclusively. */
async function reserveLayerNames(path: string, names: NameReservations): Promise<void> {
  const layer = await openVmdk(path, { readOnly: true, allowEncrypted: true, layerOnly: true });
  const files = layer.files();
  await layer.close();
  await names.reserve(files, 'exclusive');
}

/** A commit planned on a chain whose locks its caller holds (see planHeldCommit). */
export interface HeldCommit {
  /** The child to merge (real path). */
  readonly top: string;
  /** Its parent, the top once committed. */
  readonly parent: string;
  /**
   * Steps 1 to 5 of the file comment. The caller holds the top's lock and, by now, the parent's,
   * both exclusively (src/pipeline/lock.ts acquireLock), and has closed every disk of the chain.
   */
  run(): Promise<CommitResult>;
  /** Wipe the DEK and give the reserved names up (after run, or instead of it). */
  dispose(): void;
}

/**
 * Plan the commit of the chain ending at `path` for a caller that holds the top's lock exclusively
 * already and keeps it across the commit — a server committing the chain it serves
 * (src/serve/commit.ts), which must not let another process take the disk between its own close
 * and reopen. `dek`: the chain's DEK (null for a plain chain), unlocked by the caller; it is checked
 * against the chain's authenticator. The chain may still be open (read-only opens share its locks);
 * nothing is written until run(). The same rules and journal as commitSnapshot: a commit killed in
 * run() leaves the chain refused (ERR_INTERRUPTED_JOB) until resumeDisk or commitSnapshot finishes it.
 */
export async function planHeldCommit(path: string, options: { dek: Buffer | null; signal?: AbortSignal; onProgress?: ProgressListener }): Promise<HeldCommit> {
  const top = await realDiskPath(checkPath(path, 'path'));
  const started = performance.now();
  const names = new NameReservations();
  let plan: Plan | undefined;
  try {
    await names.reserve([journalPathOf(top)], 'exclusive');
    await removeJournalTemps(top);
    if (await pathExists(journalPathOf(top))) {
      throw new DiskError('ERR_INTERRUPTED_JOB', `${top} has an unfinished job (journal ${journalPathOf(top)}); finish it first (vmseal resume)`);
    }
    plan = await planCommit(top, { dek: options.dek });
  } catch (err) {
    names.close();
    throw err;
  }
  const planned = plan;
  const jobOptions: CommitSnapshotOptions = {
    ...(options.signal !== undefined ? { signal: options.signal } : {}),
    ...(options.onProgress !== undefined ? { onProgress: options.onProgress } : {}),
  };
  return {
    top,
    parent: planned.parent,
    async run() {
      await reserveLayerNames(planned.parent, names);
      return startPlanned(top, planned, jobOptions, started);
    },
    dispose() {
      planned.dek?.fill(0);
      names.close();
    },
  };
}

/**
 * Finish the commit whose journal lies beside `top` (the caller holds the top's lock): check the
 * journal (its seal; for a plain chain, that the disks agree with it), then run it from step 2.
 */
async function resumeLocked(
  top: string,
  keys: UnlockOptions | undefined,
  options: CommitSnapshotOptions,
  names: NameReservations,
  started: number,
): Promise<CommitResult> {
  const journal = await readCommitJournal(top);
  const h = journal.header;
  if (h.top !== basename(top)) throw new PipelineError('ERR_JOURNAL', `the commit journal beside ${top} belongs to ${h.top}, not ${basename(top)}`);
  const parent = parentPath(top, h.parent);
  if (h.to) {
    if (!keys) throw new DiskError('ERR_DISK_ENCRYPTED', `the interrupted commit of ${top} is of an encrypted chain; give its keys to resume it`);
    const dek = await unlockDek(h.to as EncryptionParams, h.capacity, keys, `${top} (the key in its commit journal)`);
    try {
      journal.verify(dek);
    } finally {
      dek.fill(0);
    }
  } else {
    journal.verify(null);
    // Not authenticated: act only where the disks agree with the journal (see commit-journal.ts).
    const now = await readDescriptorBytes(await locateDescriptor(parent)).catch(() => undefined);
    const known = [h.descriptor.before, h.descriptor.during, h.descriptor.final].map((d) => withoutCid(fromB64(d)));
    if (now === undefined || !known.includes(withoutCid(now))) {
      throw new PipelineError(
        'ERR_JOURNAL',
        `the commit journal ${journalPathOf(top)} is not authenticated (a plain chain) and the descriptor of ${parent} is none of those it records; refusing to act on it`,
      );
    }
  }
  if (await pathExists(top)) {
    const child = await openVmdk(top, { readOnly: true, allowEncrypted: true, layerOnly: true });
    const hint = child.descriptor?.get('parentFileNameHint');
    await child.close();
    if (hint !== h.parent)
      throw new PipelineError('ERR_JOURNAL', `the commit journal of ${top} names the parent ${h.parent}, but the disk names ${String(hint)}`);
  }
  return withParentLock(parent, names, () => runCommit(top, parent, h, options, started, true));
}

/** Steps 2 to 5 (the caller holds both locks; the journal exists and is trusted). */
async function runCommit(
  top: string,
  parent: string,
  h: CommitHeader,
  options: CommitSnapshotOptions,
  started: number,
  resumed: boolean,
): Promise<CommitResult> {
  const folder = dirname(top);
  let moved = 0;
  if (!(resumed && (await isFinal(parent, h)))) {
    const layer = await openVmdk(parent, { readOnly: true, allowEncrypted: true, layerOnly: true });
    const parentFiles = layer.files();
    await layer.close();
    await makeWritable(parentFiles);
    await removeStaleDescriptorTemps(parent);
    const loc = await locateDescriptor(parent);
    await writeDescriptor(loc, fromB64(h.descriptor.during));
    if (await pathExists(top)) moved = await copyLayer(top, parent, h.capacity, options);
    await writeDescriptor(loc, fromB64(h.descriptor.final));
  }
  // The descriptor file first: once it is gone, a resume knows the copy was complete.
  for (const f of h.topFiles) {
    await unlink(join(folder, f)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }
  // The child's change bitmap (a served chain's top is tracked) would name files that are gone.
  await unlink(`${top}${CHANGE_BITMAP_SUFFIX}`).catch(() => undefined);
  await fsyncDir(folder);
  await removeCommitJournal(top);
  return {
    top: parent,
    removed: top,
    bytesMoved: moved,
    seconds: (performance.now() - started) / 1000,
    encrypted: h.to !== null,
    ...(resumed ? { resumed: true } : {}),
  };
}

/**
 * Whether steps 2 to 4 are done: the parent's descriptor is the final one (step 4 follows the
 * copy's flush). The parent is then a whole disk that opens, and may have been written since (a
 * restarted server serving it: its first write draws a new CID): steps 2 and 3 again would put the
 * child's older grains back over those writes, and step 4 the journal's data check back over the
 * disk's. So the final descriptor is recognised by its lines, its CID aside — unless it is still the
 * "before" one, CID included: a plain chain's descriptors before and after differ only by the CID.
 * (The parent written while still "before" — opened between steps 1 and 2 — looks like the final one
 * written since: it is kept as its clients left it rather than mixed with the child's grains.)
 */
async function isFinal(parent: string, h: CommitHeader): Promise<boolean> {
  const now = await readDescriptorBytes(await locateDescriptor(parent)).catch(() => undefined);
  if (now === undefined) return false;
  const before = fromB64(h.descriptor.before);
  if (now.toString('latin1') === before.toString('latin1')) return false;
  return withoutCid(now) === withoutCid(fromB64(h.descriptor.final));
}

/** Step 3: copy every range the child holds (as stored: ciphertext stays ciphertext) into the parent. */
async function copyLayer(top: string, parent: string, capacity: number, options: CommitSnapshotOptions): Promise<number> {
  const child = await openVmdk(top, { readOnly: true, allowEncrypted: true, layerOnly: true });
  let target: VirtualDisk | undefined;
  try {
    target = await openVmdk(parent, { allowEncrypted: true, layerOnly: true });
    if (child.capacity !== capacity || target.capacity !== capacity) {
      throw new PipelineError(
        'ERR_JOURNAL',
        `the commit journal of ${top} was made for ${capacity} bytes; the child has ${child.capacity}, the parent ${target.capacity}`,
      );
    }
    let total = 0;
    for await (const r of ownRanges(child)) total += r.length;
    const progress = new ProgressTracker('snapshot-commit', 'copy', total, options.onProgress);
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(total, 1)));
    for await (const r of ownRanges(child)) {
      for (let at = r.offset; at < r.offset + r.length;) {
        if (options.signal?.aborted)
          throw abortError(options.signal, `the snapshot commit of ${top} (stopped between chunks; run it again or resume to finish it)`);
        const view = buf.subarray(0, Math.min(buf.length, r.offset + r.length - at));
        await child.readInto(at, view);
        await target.write(at, view);
        progress.add(view.length);
        at += view.length;
      }
    }
    await target.flush();
    progress.finish();
    return total;
  } finally {
    await target?.close();
    await child.close();
  }
}
