/**
 * Small checks and texts shared by the commands.
 */
import { access, stat } from 'node:fs/promises';
import { describeKeySafe, type LockerInfo } from '../../keys/index.js';
import { readEncryptionParams } from '../../disk/index.js';
import { CliError } from '../errors.js';
import { ExitCode } from '../exit-codes.js';

/** IN must exist and be a readable file (checked before keys are made or passphrases asked). */
export async function requireInputFile(path: string, what = 'the input'): Promise<void> {
  let isFile = false;
  try {
    isFile = (await stat(path)).isFile();
    await access(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new CliError('ERR_CLI_INPUT', code === 'ENOENT' ? `${what} ${path} does not exist` : `${what} ${path} cannot be read (${code ?? 'error'})`, {
      exitCode: ExitCode.FAILURE,
      hint: 'Check the path',
    });
  }
  if (!isFile) throw new CliError('ERR_CLI_INPUT', `${what} ${path} is not a file`, { exitCode: ExitCode.FAILURE, hint: 'Give a disk image file (a VMDK descriptor or a raw image)' });
}

/** OUT must not exist unless --force (checked early, so that no key is created for nothing). */
export async function requireFreeOutput(path: string, force: boolean | undefined): Promise<void> {
  if (force) return;
  const exists = await stat(path).then(
    () => true,
    () => false,
  );
  if (exists) {
    throw new CliError('ERR_OUTPUT_EXISTS', `the output ${path} already exists`, { exitCode: ExitCode.FAILURE, hint: 'Choose another output name, or add --force to replace it' });
  }
}

/** The lockers of an encrypted disk (empty for a plain disk). */
export async function lockersOf(path: string): Promise<LockerInfo[]> {
  const params = await readEncryptionParams(path);
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
