/**
 * The journal of a snapshot commit (commit.ts): `<top>.vmseal-journal` beside the child being merged,
 * the same name as an in-place job's journal, so every opener that refuses a disk with a journal
 * (src/disk assertNoJournal) refuses the top of a chain being committed.
 *
 * Layout: "VMSCMIT1" | u32 n (little-endian) | n bytes of UTF-8 JSON (CommitHeader) | 32-byte seal.
 * Written once, atomically (temp file, fsync, rename, fsync of the folder), and removed when the
 * commit is complete. There is no per-chunk state: a commit copies the child's grains into the
 * parent at the same offsets and never changes the child, so copying again from the start after a
 * crash gives the same bytes (cost ∝ the child's data).
 *
 * Seal: for an encrypted chain, HMAC-SHA-256 keyed with HKDF-SHA-256(DEK, salt empty,
 * info "vmseal commit journal v1", 32 B) — only whoever unlocks the DEK can write one resume acts
 * on. A plain chain has no key: the seal is a SHA-256 checksum, and resume acts on a plain journal
 * only when the disks agree with it (the top names the same parent; the parent's descriptor is one
 * the journal says it had, ignoring the CID), so it does no more than `snapshot commit` itself would.
 */
import { timingSafeEqual } from 'node:crypto';
import { open, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createFileAtomic, fsyncDir } from '../util/atomic-file.js';
import { PipelineError } from './errors.js';
import { isPlainFileName, journalPathOf, type JournalParams } from './journal.js';
import { encodeSealedJournal, readSealedJournal, sealJournal } from './sealed-journal.js';

const MAGIC = Buffer.from('VMSCMIT1', 'ascii');
const HKDF_INFO = 'vmseal commit journal v1';
/** A commit journal holds three descriptors of at most 64 KiB each, base64: a bound for reading one. */
const MAX_JOURNAL = 1 << 20;

export const COMMIT_OPERATION = 'snapshot-commit';

export interface CommitHeader {
  version: 1;
  operation: typeof COMMIT_OPERATION;
  /** Base name of the child being merged (the journal lies beside it). */
  top: string;
  /** Base names of the child's files (its descriptor first), removed at the end. */
  topFiles: string[];
  /** The child's parentFileNameHint: the parent's path relative to the child's folder. */
  parent: string;
  capacity: number;
  /** The parent's final encryption lines (null: a plain chain): its DEK keys the seal. */
  to: JournalParams | null;
  started: string;
  /** The parent's whole descriptor (base64) before the commit, while it runs (job line), and after. */
  descriptor: { before: string; during: string; final: string };
}

const seal = (dek: Uint8Array | null, json: Uint8Array): Buffer => sealJournal(dek, HKDF_INFO, json);

/** True when the file at `journalPathOf(top)` is a commit journal (not an in-place job's). */
export async function isCommitJournal(top: string): Promise<boolean> {
  const fh = await open(journalPathOf(top), 'r').catch(() => undefined);
  if (!fh) return false;
  try {
    const head = Buffer.alloc(MAGIC.length);
    const { bytesRead } = await fh.read(head, 0, head.length, 0);
    return bytesRead === MAGIC.length && head.equals(MAGIC);
  } finally {
    await fh.close();
  }
}

/** Write the journal of a commit of `top` (refuses to replace one). `dek`: the chain's DEK, null for a plain chain. */
export async function writeCommitJournal(top: string, header: CommitHeader, dek: Uint8Array | null): Promise<void> {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const bytes = encodeSealedJournal(MAGIC, json, seal(dek, json));
  if (bytes.length > MAX_JOURNAL)
    throw new PipelineError('ERR_JOURNAL', `the commit journal of ${top} would be ${bytes.length} bytes (more than ${MAX_JOURNAL})`);
  const path = journalPathOf(top);
  if (!(await createFileAtomic(path, bytes, 0o600))) {
    throw new PipelineError('ERR_JOURNAL', `${path} exists: a job on ${top} did not finish; resume it first`);
  }
}

export interface OpenedCommitJournal {
  header: CommitHeader;
  /** Check the seal: with the chain's DEK for an encrypted chain, null for a plain one. */
  verify(dek: Uint8Array | null): void;
}

/** Read and parse the commit journal beside `top` (the seal is checked by `verify`). */
export async function readCommitJournal(top: string): Promise<OpenedCommitJournal> {
  const path = journalPathOf(top);
  const bad = (why: string): PipelineError =>
    new PipelineError('ERR_JOURNAL', `the commit journal ${path} is unreadable (${why}); the snapshot commit of ${top} cannot be resumed safely`);
  const read = await readSealedJournal(path, MAGIC, MAX_JOURNAL, bad);
  const { json, seal: mac } = read;
  const header = read.value as CommitHeader;
  checkHeader(header, bad);
  return {
    header,
    verify(dek) {
      const expect = seal(dek, json);
      if (!timingSafeEqual(expect, mac)) {
        throw new PipelineError(
          'ERR_JOURNAL',
          `the commit journal ${path} fails its ${dek ? 'authentication' : 'checksum'}: it was changed, or it was not written for this chain's key; refusing to act on it`,
        );
      }
    },
  };
}

function checkHeader(h: CommitHeader, bad: (why: string) => PipelineError): void {
  if (h === null || typeof h !== 'object' || h.version !== 1 || h.operation !== COMMIT_OPERATION) throw bad('unknown version or operation');
  if (typeof h.top !== 'string' || !isPlainFileName(h.top)) throw bad('bad top name');
  if (!Array.isArray(h.topFiles) || h.topFiles.length === 0 || !h.topFiles.every((f) => typeof f === 'string' && isPlainFileName(f))) {
    throw bad('the top files are not plain file names in its folder');
  }
  if (typeof h.parent !== 'string' || h.parent === '' || h.parent.includes('\0')) throw bad('bad parent name');
  if (!Number.isSafeInteger(h.capacity) || h.capacity <= 0) throw bad('bad capacity');
  const d = h.descriptor as Partial<CommitHeader['descriptor']> | undefined;
  if (!d || typeof d.before !== 'string' || typeof d.during !== 'string' || typeof d.final !== 'string') throw bad('no descriptors');
  for (const b64 of [d.before, d.during, d.final]) {
    const text = Buffer.from(b64, 'base64').toString('latin1');
    for (const m of text.matchAll(/^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"([^"]*)"/gm)) {
      if (!isPlainFileName(m[1])) throw bad(`the parent's descriptor names the extent file ${JSON.stringify(m[1])}, not a plain file name`);
    }
  }
}

/** The commit is complete: remove its journal durably. */
export async function removeCommitJournal(top: string): Promise<void> {
  await unlink(journalPathOf(top)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  await fsyncDir(dirname(top));
}
