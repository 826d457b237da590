/**
 * The check that a command's input file exists, apart from ./common.ts: that module imports the
 * pipeline, keys and disk layers, and `backup create` (whose start-up is most of an incremental
 * backup's time) needs none of them.
 */
import { access, stat } from 'node:fs/promises';
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
  if (!isFile)
    throw new CliError('ERR_CLI_INPUT', `${what} ${path} is not a file`, {
      exitCode: ExitCode.FAILURE,
      hint: 'Give a disk image file (a VMDK descriptor or a raw image)',
    });
}
