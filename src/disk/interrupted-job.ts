/**
 * The error for a disk that an interrupted job left half done, naming the job and its one right
 * action (`vmseal resume`). The job is read from what it left:
 *
 *  - the journal `<disk>.vmseal-journal`: an in-place job's (src/pipeline/journal.ts: "VMSJRNL1" or
 *    "VMSJRNL2", u32 n little-endian, n bytes of JSON whose `operation` names the job) or a snapshot
 *    commit's, beside the child being merged (src/pipeline/commit-journal.ts: "VMSCMIT1");
 *  - the descriptor's job line (`encryption.job`), which holds the same operation names.
 *
 * Only the message reads them: nothing here is authenticated (resume checks the journal), so an
 * unknown or unreadable journal is named "an in-place job", and no text of it reaches the message.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { DiskError } from './errors.js';

/** The jobs by the operation names their journals and job lines record. */
const JOBS: Readonly<Record<string, string>> = {
  'encrypt-in-place': 'encryption in place',
  'rekey-deep-in-place': 'deep rekey in place',
  'rekey-shallow': 'rekey',
  'restore-over': 'rollback (restore over the disk)',
  'snapshot-commit': 'snapshot commit',
};

const COMMIT_MAGIC = 'VMSCMIT1';
const IN_PLACE_MAGICS = ['VMSJRNL1', 'VMSJRNL2'];
/** An in-place journal's JSON header lies in its first 64 KiB: a bound for reading it. */
const HEADER_AREA = 65536;

/** The job named by an operation (a journal's or a job line's); a generic name for one not known. */
function jobName(operation: string | undefined): string {
  return (operation !== undefined && Object.hasOwn(JOBS, operation) ? JOBS[operation] : undefined) ?? 'in-place job';
}

/** The operation recorded by the journal at `journal` (undefined when it cannot be told). */
function journalOperation(journal: string): string | undefined {
  let fd: number;
  try {
    fd = openSync(journal, 'r');
  } catch {
    return undefined;
  }
  try {
    const head = Buffer.alloc(HEADER_AREA);
    const n = readSync(fd, head, 0, head.length, 0);
    const magic = head.toString('latin1', 0, 8);
    if (magic === COMMIT_MAGIC) return 'snapshot-commit';
    if (!IN_PLACE_MAGICS.includes(magic) || n < 12) return undefined;
    const length = head.readUInt32LE(8);
    if (length > n - 12) return undefined;
    const header = JSON.parse(head.toString('utf8', 12, 12 + length)) as { operation?: unknown };
    return typeof header.operation === 'string' ? header.operation : undefined;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/** ERR_INTERRUPTED_JOB for `path`, which has the journal `journal` beside it. */
export function journalJobError(path: string, journal: string): DiskError {
  const job = jobName(journalOperation(journal));
  return new DiskError(
    'ERR_INTERRUPTED_JOB',
    `${path} is in the middle of an interrupted ${job} (journal ${journal}); finish it with \`vmseal resume ${path}\` (with the disk's key options if it is encrypted)`,
  );
}

/** ERR_INTERRUPTED_JOB for `path`, whose descriptor carries the job line `operation`. */
export function jobLineError(path: string, operation: string): DiskError {
  // A snapshot commit marks the parent, but its journal lies beside the child: resumed from there.
  const resume = operation === 'snapshot-commit' ? `\`vmseal resume\` on the child being committed (the top of the chain)` : `\`vmseal resume ${path}\``;
  return new DiskError(
    'ERR_INTERRUPTED_JOB',
    `${path} is in the middle of an interrupted ${jobName(operation)}; finish it with ${resume} (with the disk's key options if it is encrypted)`,
  );
}
