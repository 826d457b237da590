/**
 * Small checks and texts shared by the commands.
 */
import { stat } from 'node:fs/promises';
import { dirname, extname, resolve } from 'node:path';
import { inspectDisk } from '../../pipeline/inspect.js';
import { describeKeySafe, type LockerInfo } from '../../keys/envelope.js';
import { assertNoJournal, readEncryptionParams } from '../../disk/open.js';
import { CliError, usageError } from '../errors.js';
import type { Ctx } from '../context.js';
import type { DiskFormat } from '../parse.js';
import { ExitCode } from '../exit-codes.js';

// In a module of its own so that a command can check its input without loading the layers below.
export { requireInputFile } from './input-file.js';

/**
 * A raw image is whole 512-byte sectors, at least one. Checked here because the layers below see
 * only a capacity ("Expected a positive multiple of 512 for options.capacity") and not the file the
 * user named. Exit 5: the input is not a valid disk image, like any other format problem.
 */
export async function requireWholeSectors(path: string, format?: DiskFormat): Promise<void> {
  const size = (await stat(path)).size;
  if (size === 0) {
    throw new CliError('ERR_CLI_INPUT_SIZE', `the input ${path} is empty (0 bytes): a disk image holds at least one 512-byte sector`, {
      exitCode: ExitCode.FORMAT,
      hint: 'Check that it is the disk image you meant (an interrupted copy?)',
    });
  }
  if (size % SECTOR === 0) return;
  // Only a raw image must be whole sectors: a VMDK descriptor is a small text file of any length.
  const info = await inspectDisk(path, format ? { format } : {}).catch(() => undefined);
  if (info?.subformat !== 'raw') return;
  throw new CliError('ERR_CLI_INPUT_SIZE', `the raw image ${path} is ${size} bytes, not a multiple of ${SECTOR} (a disk is whole ${SECTOR}-byte sectors)`, {
    exitCode: ExitCode.FORMAT,
    hint: `Check that it is the disk image you meant; if it is, pad it to whole sectors with \`truncate -s %${SECTOR} FILE\``,
  });
}

const SECTOR = 512;

/**
 * OUT must not exist unless --force (checked early, so that no key is created for nothing), and its
 * folder must exist: otherwise the first file the job creates is its lock or temp file, and the
 * error would name that file instead of the missing folder.
 */
export async function requireFreeOutput(path: string, force: boolean | undefined): Promise<void> {
  const folder = dirname(resolve(path));
  const folderStat = await stat(folder).catch(() => undefined);
  if (!folderStat?.isDirectory()) {
    throw new CliError('ERR_CLI_OUTPUT_DIR', `the output folder ${folder} ${folderStat ? 'is not a folder' : 'does not exist'}`, {
      exitCode: ExitCode.FAILURE,
      hint: 'Create the folder first, or check the output path',
    });
  }
  if (force) return;
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists) {
    throw new CliError('ERR_OUTPUT_EXISTS', `the output ${path} already exists`, {
      exitCode: ExitCode.FAILURE,
      hint: 'Choose another output name, or add --force to replace it',
    });
  }
}

/**
 * A raw output must not be named .vmdk (checked before keys are asked for; the pipeline checks it
 * too): reading it back would mean guessing its format from what the guest wrote in it.
 */
export function requireRawOutputName(output: string, subformat: string | undefined): void {
  if (subformat !== 'raw' || extname(output).toLowerCase() !== '.vmdk') return;
  throw usageError(
    `the raw output ${output} is named .vmdk: reading it back would mean guessing its format from guest-written content (a guest could make it read as another disk)`,
    'Name a raw image .img or .raw, or choose a VMDK --subformat',
  );
}

/** The `--format` of a command as job options (nothing: detect). */
export function formatOpts(format: DiskFormat | undefined): { format?: DiskFormat } {
  return format === undefined ? {} : { format };
}

/** Print the notes a job returned (e.g. a VMDK output named like a raw image). */
export function printNotes(ctx: Ctx, notes: readonly string[] | undefined): void {
  for (const n of notes ?? []) ctx.output.note(`Note: ${n}.`);
}

/** The lockers of an encrypted disk (empty for a plain disk). */
export async function lockersOf(path: string, format?: DiskFormat): Promise<LockerInfo[]> {
  const params = await readEncryptionParams(path, formatOpts(format));
  return params ? describeKeySafe(params.keySafe) : [];
}

/** "local key 3f2a…", "KMIP provider kms key 17", "recovery passphrase (PBKDF2-HMAC-SHA-256, 600000 rounds)". */
export function lockerText(l: LockerInfo): string {
  if (l.kind === 'provider') return `key ${l.keyId ?? '?'} of provider ${l.providerId ?? '?'}`;
  if (l.kind === 'passphrase') {
    const kdf = l.kdf ? ` (${l.kdf.name}${l.kdf.rounds !== undefined ? `, ${l.kdf.rounds} rounds` : ''})` : '';
    return `recovery passphrase${kdf}`;
  }
  return `${l.lockerType} locker (not supported by vmseal)`;
}

/** JSON form of a locker (no secrets exist in a LockerInfo). */
export function lockerJson(l: LockerInfo): Record<string, unknown> {
  return { ...l };
}

/** Whether an interrupted job left its journal beside `disk` (a killed snapshot commit may have removed the disk's own files already). */
export function hasJournal(disk: string): boolean {
  try {
    assertNoJournal(disk);
    return false;
  } catch {
    return true;
  }
}
