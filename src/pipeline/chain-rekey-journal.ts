/**
 * The journal of a deep rekey of a snapshot chain (chain-deep-rekey.ts): `journal` inside the job's
 * staging folder `.<base>.vmseal-chain-rekey/` beside the chain's base disk. Written once, when every
 * new layer is staged and durable, just before the commit step (the rename of the new base over the
 * old one); removed with the staging folder once every layer is moved.
 *
 * Layout: "VMSCRKY1" | u32 n (little-endian) | n bytes of UTF-8 JSON (ChainRekeyHeader) | 32-byte seal.
 * Seal: HMAC-SHA-256 keyed with HKDF-SHA-256(new DEK, salt empty, info "vmseal chain rekey journal v1",
 * 32 B): only whoever unlocks the new DEK (the lockers the job was given) wrote a journal that resume
 * acts on. Every name in it is a plain file name in the base's folder.
 */
import { timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import { createFileAtomic } from '../util/atomic-file.js';
import { PipelineError } from './errors.js';
import { isPlainFileName, type JournalParams } from './journal.js';
import { encodeSealedJournal, readSealedJournal, sealJournal } from './sealed-journal.js';

const MAGIC = Buffer.from('VMSCRKY1', 'ascii');
const HKDF_INFO = 'vmseal chain rekey journal v1';
/** Two descriptors per layer (a few KiB each, base64): a bound for reading one. */
const MAX_JOURNAL = 16 << 20;
/** The journal's name inside the staging folder. */
export const CHAIN_JOURNAL = 'journal';

export const CHAIN_REKEY_OPERATION = 'rekey-deep-chain';

export interface ChainRekeyHeader {
  version: 1;
  operation: typeof CHAIN_REKEY_OPERATION;
  /**
   * The layers, base first (file names in the base's folder, the staging folder's parent), each with
   * its new whole descriptor (base64) while the layers move (with the job line) and after.
   */
  layers: Array<{ name: string; during: string; final: string }>;
  capacity: number;
  /** The chain's encryption before the job (every layer shares KeySafe and disk id): old KEKs to retire. */
  from: JournalParams;
  /** The new base's final lines: its DEK keys the seal. */
  to: JournalParams;
  started: string;
}

const seal = (dek: Uint8Array, json: Uint8Array): Buffer => sealJournal(dek, HKDF_INFO, json);

/** Write the journal into `stage` (refuses to replace one). `dek`: the new DEK. */
export async function writeChainJournal(stage: string, header: ChainRekeyHeader, dek: Uint8Array): Promise<void> {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const bytes = encodeSealedJournal(MAGIC, json, seal(dek, json));
  if (bytes.length > MAX_JOURNAL)
    throw new PipelineError('ERR_JOURNAL', `the chain rekey journal in ${stage} would be ${bytes.length} bytes (more than ${MAX_JOURNAL})`);
  if (!(await createFileAtomic(join(stage, CHAIN_JOURNAL), bytes, 0o600))) {
    throw new PipelineError('ERR_JOURNAL', `${join(stage, CHAIN_JOURNAL)} exists: an earlier deep rekey of the chain did not finish; resume it first`);
  }
}

export interface OpenedChainJournal {
  header: ChainRekeyHeader;
  /** Check the seal with the new DEK (unlocked from `header.to`). */
  verify(dek: Uint8Array): void;
}

/** Read and parse the journal in `stage`; undefined when there is none (the seal is checked by `verify`). */
export async function readChainJournal(stage: string): Promise<OpenedChainJournal | undefined> {
  const path = join(stage, CHAIN_JOURNAL);
  const bad = (why: string): PipelineError =>
    new PipelineError('ERR_JOURNAL', `the chain rekey journal ${path} is unreadable (${why}); the deep rekey of the chain cannot be resumed safely`);
  const read = await readSealedJournal(path, MAGIC, MAX_JOURNAL, bad).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw err;
  });
  if (!read) return undefined;
  const { json, seal: mac } = read;
  const header = read.value as ChainRekeyHeader;
  checkHeader(header, bad);
  return {
    header,
    verify(dek) {
      if (!timingSafeEqual(seal(dek, json), mac)) {
        throw new PipelineError(
          'ERR_JOURNAL',
          `the chain rekey journal ${path} fails its authentication: it was changed, or not written for this key; refusing to act on it`,
        );
      }
    },
  };
}

function checkHeader(h: ChainRekeyHeader, bad: (why: string) => PipelineError): void {
  if (h === null || typeof h !== 'object' || h.version !== 1 || h.operation !== CHAIN_REKEY_OPERATION) throw bad('unknown version or operation');
  const layerOk = (l: ChainRekeyHeader['layers'][number]): boolean =>
    l !== null && typeof l === 'object' && typeof l.name === 'string' && isPlainFileName(l.name) && typeof l.during === 'string' && typeof l.final === 'string';
  if (!Array.isArray(h.layers) || h.layers.length < 2 || !h.layers.every(layerOk))
    throw bad('the layers are not plain file names in the base folder with descriptors');
  if (!Number.isSafeInteger(h.capacity) || h.capacity <= 0) throw bad('bad capacity');
  if (!h.from || typeof h.from !== 'object' || !h.to || typeof h.to !== 'object') throw bad('no encryption lines');
}
