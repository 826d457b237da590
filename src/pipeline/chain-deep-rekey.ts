/**
 * Deep rekey of a snapshot chain: every layer, base … top, re-encrypted under ONE new DEK as one
 * journaled job (docs/pipeline.md, "deepRekey"). The layers share their DEK (docs/format.md,
 * "Snapshot chains"), so no layer can be rekeyed alone; the new chain is rebuilt aside and moved over
 * the old one.
 *
 * Order, each step durable before the next:
 *   1. the whole chain is found from any of its layers (the children of each layer are looked for in
 *      the base's folder: a branch is refused, ERR_SNAPSHOT_SIBLINGS), opened with every check, and
 *      held: the top by its lock exclusively, the layers below shared;
 *   2. the new chain is built in `.<base>.vmseal-chain-rekey/` beside the base (chain-rebuild.ts: the
 *      base by a copy job under the new lockers, each child a new snapshot of the new parent — a new
 *      layerId, the parent's as parentLayerId, a new authenticator, CID/parentCID consistent — holding
 *      exactly the grains the old child holds). New KEKs are listed in `keys.json` there;
 *   3. every staged layer's descriptor gets the job line `encryption.job = "rekey-deep-chain"` (and is
 *      fsynced, data included), then the journal (chain-rekey-journal.ts: each layer's descriptor with
 *      and without the job line) is written in the folder;
 *   4. COMMIT: every layer's lock is taken exclusively and the staged base is renamed over the old
 *      base (folder fsynced). From here every layer of the chain is refused (ERR_INTERRUPTED_JOB):
 *      a moved layer carries the job line, and an old layer's chain reaches a moved one going down
 *      before any CID that no longer matches (the job line is checked first);
 *   5. the other layers are renamed over the old ones, bottom up, the folder fsynced, each layer's
 *      final descriptor (no job line) written from the journal, bottom up, and the folder removed.
 *
 * A job killed before step 4 changed nothing outside its staging folder: the old chain is intact and
 * usable, and the next deep rekey or resume of any layer removes the folder and its new KEKs (a roll
 * back). Killed after step 4, `resumeDisk` of any layer (or the same deep rekey again) checks the
 * journal's seal with the new key and repeats step 5, which is idempotent.
 */
import { chmod, mkdir, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ChainDisk, Descriptor, openDisk as openVmdk } from '../vmdk/index.js';
import { MAX_CHAIN_DEPTH, parentPathOf } from '../vmdk/chain-open.js';
import { isDiskUuid } from '../vmdk/create.js';
import { createEncryptedSnapshot, LINE, openDisk, readEncryptionParams, unlockDek, type EncryptionParams } from '../disk/for-pipeline.js';
import { describeKeySafe, type KeyProvider, type KeyRef } from '../keys/index.js';
import { rebuildChain, fsyncFile } from './chain-rebuild.js';
import { CHAIN_REKEY_OPERATION, readChainJournal, writeChainJournal, type ChainRekeyHeader } from './chain-rekey-journal.js';
import { locateDescriptor, readDescriptorBytes, writeDescriptor } from './descriptor-io.js';
import { PipelineError } from './errors.js';
import { discardJobKeys } from './job-keys.js';
import { convertDisk } from './jobs.js';
import { acquireLock, acquireLocks, releaseLocks, NameReservations } from './lock.js';
import type { EncryptSpec, JobOptions, JobResult, UnlockOptions } from './options.js';
import type { Progress } from './progress.js';
import { cleanStaleStages, fsyncDir, pathExists, readKeyList, writeKeyList } from './staging.js';

const STAGE_SUFFIX = '.vmseal-chain-rekey';
/** Most .vmdk files looked at for the children of the chain's layers (a bound, not a target). */
const MAX_SCANNED = 10_000;

/**
 * A staged layer's final descriptor with the old layer's ddb.uuid: the rebuilt chain is the same
 * disk, rewritten in place of itself, so it keeps the identity a backup history (the base's uuid,
 * docs/backup.md) or vSphere follows it by — as a single disk's deep rekey keeps it (copy.ts). The
 * base is made by a copy job and each child by createSnapshot, which both draw a new one. A layer
 * without a valid uuid keeps the one it was given. ddb lines are outside the encryption lines: the
 * authenticator does not cover them.
 */
async function keptIdentity(final: Buffer, staged: string, old: string): Promise<Buffer> {
  const uuid = Descriptor.parse(await readDescriptorBytes(await locateDescriptor(old)), { file: old }).get('ddb.uuid');
  if (!isDiskUuid(uuid)) return final;
  const d = Descriptor.parse(final, { file: staged });
  if (d.get('ddb.uuid') === uuid) return final;
  d.set('ddb.uuid', uuid);
  return d.toBuffer();
}

/** The staging folder (and journal) of a deep rekey of the chain whose base is `base`. */
export function chainRekeyStage(base: string): string {
  return join(dirname(base), `.${basename(base)}${STAGE_SUFFIX}`);
}

/**
 * The base of the chain `path` belongs to, from the descriptors' parentFileNameHint alone: a chain
 * half moved by a killed job (CIDs that do not match, a job line) must not stop the walk.
 */
async function baseOf(path: string): Promise<string> {
  let at = path;
  for (let depth = 0; depth <= MAX_CHAIN_DEPTH; depth++) {
    const layer = await openVmdk(at, { readOnly: true, allowEncrypted: true, layerOnly: true });
    let hint: string | undefined;
    try {
      hint = layer.descriptor?.get('parentFileNameHint');
    } finally {
      await layer.close();
    }
    if (hint === undefined) return at;
    at = parentPathOf(at, hint);
  }
  throw new PipelineError('ERR_SNAPSHOT_CHAIN', `the chain of ${path} is deeper than ${MAX_CHAIN_DEPTH} layers`);
}

/** The base of `path`'s chain when a deep rekey of that chain left its staging folder; else undefined. */
export async function pendingChainRekey(path: string): Promise<string | undefined> {
  const base = await baseOf(path).catch(() => undefined);
  if (base === undefined) return undefined;
  return (await pathExists(chainRekeyStage(base))) ? base : undefined;
}

/** The snapshots made on each disk of `dir`: real path of the parent → real paths of its children. */
async function childrenIn(dir: string): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  let scanned = 0;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (!name.toLowerCase().endsWith('.vmdk') || ++scanned > MAX_SCANNED) continue;
    const file = join(dir, name);
    const layer = await openVmdk(file, { readOnly: true, allowEncrypted: true, layerOnly: true }).catch(() => undefined);
    if (!layer) continue;
    const hint = layer.descriptor?.get('parentFileNameHint');
    await layer.close();
    if (hint === undefined) continue;
    const parent = await realpath(parentPathOf(file, hint)).catch(() => undefined);
    if (parent === undefined) continue;
    const child = await realpath(file);
    out.set(parent, [...(out.get(parent) ?? []), child]);
  }
  return out;
}

function siblings(parent: string, kids: string[]): PipelineError {
  return new PipelineError(
    'ERR_SNAPSHOT_SIBLINGS',
    `${parent} has more than one snapshot (${kids.slice(0, 3).join(', ')}${kids.length > 3 ? ', …' : ''}): a deep rekey re-encrypts one chain, base to top, and a branch would be left under the old key. Remove the other branches (or copy one out with vmseal convert) first`,
  );
}

/** Every layer of the chain `path` belongs to, base first, checked to be one line without branches. */
async function chainLayers(path: string): Promise<string[]> {
  const opened = await openVmdk(path, { readOnly: true, allowEncrypted: true });
  let down: string[];
  try {
    down = opened instanceof ChainDisk ? opened.layers().map((l) => l.path) : [opened.path];
  } finally {
    await opened.close();
  }
  const layers = await Promise.all(down.reverse().map((l) => realpath(l)));
  const children = await childrenIn(dirname(layers[0]!));
  for (let i = 0; ; i++) {
    const kids = children.get(layers[i]!) ?? [];
    if (i < layers.length - 1) {
      if (kids.some((k) => k !== layers[i + 1])) throw siblings(layers[i]!, kids);
      continue;
    }
    if (kids.length === 0) break;
    if (kids.length > 1) throw siblings(layers[i]!, kids);
    if (layers.length > MAX_CHAIN_DEPTH) throw new PipelineError('ERR_SNAPSHOT_CHAIN', `the chain of ${path} is deeper than ${MAX_CHAIN_DEPTH} layers`);
    layers.push(kids[0]!);
  }
  return layers;
}

/** Refuse layers the move cannot carry: other folders than the base's, or layers with extent files of their own. */
async function checkMovable(layers: readonly string[]): Promise<void> {
  const dir = dirname(layers[0]!);
  for (const l of layers) {
    if (dirname(l) !== dir) {
      throw new PipelineError(
        'ERR_SNAPSHOT_CHAIN',
        `${l} is not in the folder of its chain's base ${layers[0]}: a deep rekey of a chain moves layers within one folder; move them together first`,
      );
    }
    const layer = await openVmdk(l, { readOnly: true, allowEncrypted: true, layerOnly: true });
    const single = layer.subformat === 'monolithicSparse' && layer.files().length === 1;
    await layer.close();
    if (!single) {
      throw new PipelineError(
        'ERR_SNAPSHOT_CHAIN',
        `${l} is ${layer.subformat}: a deep rekey of a snapshot chain rebuilds single-file (monolithicSparse) layers only; convert the chain's top to one disk (vmseal convert) and rekey that`,
      );
    }
  }
}

/**
 * Write a layer's whole descriptor. A layer with children (`readOnly`) is mode 0444: its write bits
 * are set for the write and cleared again; the top keeps its mode.
 */
async function writeLayerDescriptor(path: string, bytes: Uint8Array, readOnly: boolean): Promise<void> {
  const mode = (await stat(path)).mode & 0o777;
  if (readOnly) await chmod(path, mode | 0o200);
  await writeDescriptor(await locateDescriptor(path), bytes);
  if (readOnly) await chmod(path, mode & ~0o222);
  await fsyncFile(path);
}

/** Provider keys of `to` that `from` did not have and that no locker named: the KEKs this job made. */
function madeKeys(from: EncryptionParams, to: EncryptionParams, spec: EncryptSpec): KeyRef[] {
  const named = new Set(spec.lockers.flatMap((l) => (l.kind === 'provider' && l.keyId !== undefined ? [`${l.provider.id}\0${l.keyId}`] : [])));
  const had = new Set(describeKeySafe(from.keySafe).flatMap((l) => (l.kind === 'provider' ? [`${l.providerId}\0${l.keyId}`] : [])));
  const out: KeyRef[] = [];
  for (const l of describeKeySafe(to.keySafe)) {
    if (l.kind !== 'provider' || l.providerId === undefined || l.keyId === undefined) continue;
    const k = `${l.providerId}\0${l.keyId}`;
    if (!named.has(k) && !had.has(k)) out.push({ providerId: l.providerId, keyId: l.keyId });
  }
  return out;
}

/**
 * Remove an uncommitted job's staging folder: the copy job's own staging folder inside it, the KEKs
 * listed (those no provider can remove stay listed, with the folder), then the folder.
 */
async function rollBack(stage: string, base: string, providers: readonly KeyProvider[]): Promise<void> {
  await cleanStaleStages(stage, basename(base), undefined, providers);
  const left = await discardJobKeys(await readKeyList(stage), providers);
  if (left.length > 0) {
    for (const name of await readdir(stage)) if (name !== 'keys.json') await rm(join(stage, name), { recursive: true, force: true });
    await writeKeyList(stage, left);
    return;
  }
  await rm(stage, { recursive: true, force: true });
  await fsyncDir(dirname(stage));
}

/**
 * Step 5 (idempotent): the other layers moved over the old ones (bottom up), each layer's final
 * descriptor written (bottom up: a layer opens once it and every layer under it are final), the
 * staging folder removed.
 */
async function rollForward(stage: string, h: ChainRekeyHeader): Promise<void> {
  const dir = dirname(stage);
  for (const l of h.layers.slice(1)) if (await pathExists(join(stage, l.name))) await rename(join(stage, l.name), join(dir, l.name));
  await fsyncDir(dir);
  for (const [i, l] of h.layers.entries()) await writeLayerDescriptor(join(dir, l.name), Buffer.from(l.final, 'base64'), i < h.layers.length - 1);
  await rm(stage, { recursive: true, force: true });
  await fsyncDir(dir);
}

function resultOf(path: string, h: ChainRekeyHeader, bytes: number, started: number, resumed: boolean): JobResult {
  return {
    operation: 'rekey-deep',
    input: path,
    output: path,
    subformat: 'monolithicSparse',
    virtualSize: h.capacity,
    bytesProcessed: bytes,
    seconds: (performance.now() - started) / 1000,
    encrypted: true,
    diskId: h.to.diskId,
    ...(resumed ? { resumed: true } : {}),
    notes: [`a snapshot chain of ${h.layers.length} layers (${h.layers.map((l) => l.name).join(', ')}), every layer re-encrypted under the new key`],
  };
}

export interface SettledChainRekey {
  result: JobResult;
  /** The chain's encryption before the job (for retiring the old KEKs). */
  from: EncryptionParams;
}

/**
 * Finish or undo the deep rekey whose staging folder lies beside `base` (see pendingChainRekey):
 * committed (the staged base was moved and the journal is there) → step 5, after the journal's seal
 * is checked with `newKeys`; else → rolled back. Null when rolled back (the old chain stands).
 */
export async function settleChainRekey(
  path: string,
  base: string,
  newKeys: UnlockOptions,
  providers: readonly KeyProvider[],
): Promise<SettledChainRekey | null> {
  const started = performance.now();
  const stage = chainRekeyStage(base);
  const names = new NameReservations();
  try {
    if (!names.tryReserveExclusive(stage)) throw new PipelineError('ERR_DISK_BUSY', `a deep rekey of the chain of ${base} is running (it holds ${stage})`);
    const journal = await readChainJournal(stage);
    if (!journal || (await pathExists(join(stage, basename(base))))) {
      await rollBack(stage, base, providers);
      return null;
    }
    const h = journal.header;
    if (h.layers[0]!.name !== basename(base)) {
      throw new PipelineError('ERR_JOURNAL', `the chain rekey journal in ${stage} belongs to ${h.layers[0]!.name}, not ${basename(base)}`);
    }
    const dek = await unlockDek(h.to as EncryptionParams, h.capacity, newKeys, `${base} (the new key in its chain rekey journal)`);
    try {
      journal.verify(dek);
    } finally {
      dek.fill(0);
    }
    const locks = await acquireLocks(
      h.layers.map((l) => join(dirname(base), l.name)),
      'resume (deep rekey of a snapshot chain)',
    );
    try {
      await rollForward(stage, h);
    } finally {
      await releaseLocks(locks);
    }
    return { result: resultOf(path, h, 0, started, true), from: h.from as EncryptionParams };
  } finally {
    names.close();
  }
}

export interface ChainRekeySpec {
  /** Unlock the chain's current DEK. */
  keys: UnlockOptions;
  /** Unlock the new DEK (from the new lockers). */
  newKeys: UnlockOptions;
  encrypt: EncryptSpec;
  opts: JobOptions;
  /** Providers that can remove the KEKs the job made if it does not commit. */
  providers: readonly KeyProvider[];
}

/** Deep rekey of the chain `path` (any layer) belongs to, as described at the top of this file. */
export async function deepRekeyChain(path: string, spec: ChainRekeySpec): Promise<JobResult> {
  const started = performance.now();
  const { keys, newKeys, encrypt, opts, providers } = spec;
  const layers = await chainLayers(path);
  await checkMovable(layers);
  const base = layers[0]!;
  const top = layers[layers.length - 1]!;
  const stage = chainRekeyStage(base);
  const lock = await acquireLock(top, 'rekey-deep (snapshot chain)');
  const names = new NameReservations();
  try {
    await names.reserve([stage], 'exclusive');
    if (await pathExists(stage)) {
      // Not committed (a committed job's base carries the job line, and opening the chain failed).
      await rollBack(stage, base, providers);
      if (await pathExists(stage)) {
        throw new PipelineError(
          'ERR_DISK_BUSY',
          `${stage}, left by an earlier deep rekey of the chain, lists new keys that could not be removed: give their providers, or remove them, then run again`,
        );
      }
    }
    // Every check of openDisk on the whole chain; held open (the layers below shared) until the commit.
    const view = await openDisk(top, { keys, readOnly: true });
    let header: ChainRekeyHeader;
    let bytes = 0;
    try {
      const from = (await readEncryptionParams(base))!;
      await mkdir(stage, { mode: 0o700 });
      const common = { ...(opts.signal ? { signal: opts.signal } : {}), ...(opts.threads ? { threads: opts.threads } : {}) };
      const staged = await rebuildChain(layers, stage, {
        makeBase: async (old, made) => {
          const r = await convertDisk(old, made, {
            ...common,
            ...(opts.chunkSize ? { chunkSize: opts.chunkSize } : {}),
            // The base's copy is the bulk of the job's data: reported as the rekey's progress.
            ...(opts.onProgress ? { onProgress: (p: Progress) => opts.onProgress!({ ...p, operation: 'rekey-deep' }) } : {}),
            keys,
            encrypt,
            subformat: 'monolithicSparse',
          });
          bytes += r.bytesProcessed;
          // Listed at once: if the job dies before its commit, these keys lock nothing.
          await writeKeyList(stage, madeKeys(from, (await readEncryptionParams(made))!, encrypt));
        },
        makeChild: (parent, name) => createEncryptedSnapshot(parent, { keys: newKeys, name }),
        openOld: (layer) => openDisk(layer, { keys, readOnly: true, ...common }),
        openNew: (layer) => openDisk(layer, { keys: newKeys, ...common }),
        signal: opts.signal,
        onCopied: (n) => (bytes += n),
      });
      const stagedBase = staged[0]!;
      const to = (await readEncryptionParams(stagedBase))!;
      // Every staged layer carries the job line while the layers move: an old layer above a moved one
      // reaches it (going down its chain) before any CID that no longer matches.
      const described: ChainRekeyHeader['layers'] = [];
      for (const [i, s] of staged.entries()) {
        const final = await keptIdentity(await readDescriptorBytes(await locateDescriptor(s)), s, layers[i]!);
        const during = Descriptor.parse(final, { file: s });
        during.set(LINE.job, CHAIN_REKEY_OPERATION, { after: LINE.keySafe });
        await writeLayerDescriptor(s, during.toBuffer(), i < staged.length - 1);
        described.push({ name: basename(s), during: during.toBuffer().toString('base64'), final: final.toString('base64') });
      }
      header = {
        version: 1,
        operation: CHAIN_REKEY_OPERATION,
        layers: described,
        capacity: view.capacity,
        from,
        to,
        started: new Date().toISOString(),
      };
      await fsyncDir(stage);
      const dek = await unlockDek(to, view.capacity, newKeys, `${stagedBase} (the new key)`);
      try {
        await writeChainJournal(stage, header, dek);
      } finally {
        dek.fill(0);
      }
    } catch (err) {
      await view.close().catch(() => undefined);
      await rollBack(stage, base, providers).catch(() => undefined);
      throw err;
    }
    await view.close();
    let locks;
    try {
      locks = await acquireLocks(layers.slice(0, -1), 'rekey-deep (snapshot chain layer)');
    } catch (err) {
      await rollBack(stage, base, providers).catch(() => undefined);
      throw err;
    }
    try {
      // The commit: the new base (with its job line) replaces the old one.
      await rename(join(stage, basename(base)), base);
      await fsyncDir(dirname(base));
      await rollForward(stage, header);
    } finally {
      await releaseLocks(locks);
    }
    return resultOf(path, header, bytes, started, false);
  } finally {
    names.close();
    await lock.release();
  }
}

/** A chain layer given to a deep rekey in place: the chain is rebuilt aside. */
export function chainNotInPlace(path: string): PipelineError {
  return new PipelineError(
    'ERR_SNAPSHOT_CHAIN',
    `${path} is a layer of a snapshot chain: its deep rekey rebuilds the whole chain aside (room for a copy of it is needed) and cannot run in place; run it without inPlace (--in-place)`,
  );
}
