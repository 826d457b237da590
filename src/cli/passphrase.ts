/**
 * Where passphrases come from: a file (--passphrase-file), an environment variable
 * (--passphrase-env NAME, or VMSEAL_PASSPHRASE), or a prompt on the terminal with echo off —
 * never from argv, which leaks into shell history and `ps` for every user on the machine.
 */
import { readFile, stat } from 'node:fs/promises';
import { CliError, usageError } from './errors.js';
import { ExitCode } from './exit-codes.js';

export const DEFAULT_PASSPHRASE_ENV = 'VMSEAL_PASSPHRASE';
/** A passphrase file larger than this is not a passphrase file (a misnamed disk image, say). */
const MAX_PASSPHRASE_FILE_BYTES = 4096;
/** The same bound on what the prompt accepts. */
const MAX_PASSPHRASE_CHARS = 1024;

export interface PassphraseSourceOptions {
  passphraseFile?: string | undefined;
  passphraseEnv?: string | undefined;
}

export interface PromptIO {
  input: NodeJS.ReadableStream & { isTTY?: boolean; setRawMode?: (raw: boolean) => unknown };
  output: NodeJS.WritableStream;
}

export type PassphraseSource = { kind: 'file'; path: string } | { kind: 'env'; name: string } | { kind: 'prompt' } | { kind: 'none' };

/**
 * Decide where a passphrase would come from, without reading it: the explicit file, the explicit
 * variable, VMSEAL_PASSPHRASE if set, a prompt if stdin is a terminal, else none.
 */
export function passphraseSource(
  opts: PassphraseSourceOptions,
  env: NodeJS.ProcessEnv = process.env,
  stdinIsTTY: boolean = process.stdin.isTTY === true,
): PassphraseSource {
  if (opts.passphraseFile !== undefined && opts.passphraseEnv !== undefined) {
    throw usageError('--passphrase-file and --passphrase-env were both given', 'Give only one passphrase source');
  }
  if (opts.passphraseFile !== undefined) return { kind: 'file', path: opts.passphraseFile };
  if (opts.passphraseEnv !== undefined) return { kind: 'env', name: opts.passphraseEnv };
  if (env[DEFAULT_PASSPHRASE_ENV] !== undefined) return { kind: 'env', name: DEFAULT_PASSPHRASE_ENV };
  if (stdinIsTTY) return { kind: 'prompt' };
  return { kind: 'none' };
}

/** Whether a passphrase was given non-interactively (a file or a variable). */
export function hasExplicitPassphrase(opts: PassphraseSourceOptions, env: NodeJS.ProcessEnv = process.env): boolean {
  return opts.passphraseFile !== undefined || opts.passphraseEnv !== undefined || env[DEFAULT_PASSPHRASE_ENV] !== undefined;
}

/** Read a passphrase file: its content without one trailing newline (LF or CRLF), as UTF-8. */
export async function readPassphraseFile(path: string, option = '--passphrase-file'): Promise<string> {
  let size: number;
  try {
    const st = await stat(path);
    if (!st.isFile())
      throw new CliError('ERR_CLI_PASSPHRASE_FILE', `${option} ${path} is not a regular file`, {
        exitCode: ExitCode.USAGE,
        hint: 'Give a file that holds only the passphrase',
      });
    size = st.size;
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError('ERR_CLI_PASSPHRASE_FILE', `cannot read ${option} ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`, {
      exitCode: ExitCode.USAGE,
      hint: 'Check the path and its permissions',
    });
  }
  if (size > MAX_PASSPHRASE_FILE_BYTES) {
    throw new CliError('ERR_CLI_PASSPHRASE_FILE', `${option} ${path} is ${size} bytes, more than a passphrase (at most ${MAX_PASSPHRASE_FILE_BYTES})`, {
      exitCode: ExitCode.USAGE,
      hint: 'Give a file that holds only the passphrase',
    });
  }
  const text = (await readFile(path)).toString('utf8').replace(/\r?\n$/, '');
  if (text.length === 0) {
    throw new CliError('ERR_CLI_PASSPHRASE_FILE', `${option} ${path} is empty`, { exitCode: ExitCode.USAGE, hint: 'Write the passphrase into the file' });
  }
  return text;
}

export function readPassphraseEnv(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const value = env[name];
  if (value === undefined || value.length === 0) {
    throw usageError(
      `the environment variable ${name} is ${value === undefined ? 'not set' : 'empty'}`,
      `Set ${name} to the passphrase, or give --passphrase-file`,
    );
  }
  return value;
}

/**
 * Read one line from a terminal with echo off. Backspace edits, Ctrl-C rejects with an AbortError,
 * Ctrl-D on an empty line rejects. Works on any stream pair so that it can be tested without a TTY.
 */
export function promptHidden(prompt: string, io: PromptIO, signal?: AbortSignal): Promise<string> {
  const { input, output } = io;
  return new Promise<string>((resolve, reject) => {
    let value = '';
    const wasRaw = (input as { isRaw?: boolean }).isRaw === true;
    const cleanup = (): void => {
      input.removeListener('data', onData);
      signal?.removeEventListener('abort', onAbort);
      if (input.setRawMode) input.setRawMode(wasRaw);
      input.pause();
      output.write('\n');
    };
    const fail = (err: Error): void => {
      value = '';
      cleanup();
      reject(err);
    };
    const onAbort = (): void => fail(abortError());
    const onData = (chunk: Buffer | string): void => {
      const text = typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      for (const ch of text) {
        if (ch === '\r' || ch === '\n') {
          const result = value;
          value = '';
          cleanup();
          resolve(result);
          return;
        }
        if (ch === '\u0003') return fail(abortError());
        if (ch === '\u0004') {
          if (value.length === 0) return fail(new CliError('ERR_CLI_PASSPHRASE', 'no passphrase entered (end of input)', { exitCode: ExitCode.USAGE }));
          continue;
        }
        if (ch === '\u007f' || ch === '\b') {
          value = value.slice(0, -1);
          continue;
        }
        if (ch < ' ') continue;
        if (value.length >= MAX_PASSPHRASE_CHARS) {
          return fail(new CliError('ERR_CLI_PASSPHRASE', `the passphrase is longer than ${MAX_PASSPHRASE_CHARS} characters`, { exitCode: ExitCode.USAGE }));
        }
        value += ch;
      }
    };
    if (signal?.aborted) return reject(abortError());
    signal?.addEventListener('abort', onAbort, { once: true });
    // Echo off before the prompt appears: whatever is typed (or pasted) after it is never shown.
    if (input.setRawMode) input.setRawMode(true);
    output.write(prompt);
    input.on('data', onData);
    input.resume();
  });
}

function abortError(): Error {
  const err = new Error('interrupted at the passphrase prompt');
  err.name = 'AbortError';
  return err;
}

export interface ReadPassphraseOptions extends PassphraseSourceOptions {
  /** What the passphrase is for, in the prompt: "recovery passphrase for disk.vmdk". */
  purpose: string;
  /** A new passphrase: prompt twice and compare. */
  confirm?: boolean;
  /** The option named in messages about the passphrase file (default: --passphrase-file). */
  fileOption?: string;
  /** Refuse shorter new passphrases (a recovery passphrase guards the whole disk). */
  minLength?: number;
  signal?: AbortSignal;
  env?: NodeJS.ProcessEnv;
  io?: PromptIO;
  /**
   * What to do when no source is available and there is no terminal. The default names the
   * recovery/backup passphrase sources; a command that reads its passphrase elsewhere (keys init
   * reads the keystore passphrase from --home-passphrase-file) must name its own, or the user is
   * sent to options the command refuses.
   */
  noSourceHint?: string;
}

/** The hint for a passphrase read through --passphrase-file / --passphrase-env / VMSEAL_PASSPHRASE. */
export const PASSPHRASE_SOURCES_HINT = `Give --passphrase-file F or --passphrase-env NAME, or set ${DEFAULT_PASSPHRASE_ENV}`;

/** Read a passphrase from the configured source; throws a usage error when none is available. */
export async function readPassphrase(opts: ReadPassphraseOptions): Promise<string> {
  const env = opts.env ?? process.env;
  const io: PromptIO = opts.io ?? { input: process.stdin, output: process.stderr };
  const source = passphraseSource(opts, env, io.input.isTTY === true);
  let value: string;
  switch (source.kind) {
    case 'file':
      value = await readPassphraseFile(source.path, opts.fileOption);
      break;
    case 'env':
      value = readPassphraseEnv(source.name, env);
      break;
    case 'prompt': {
      value = await promptHidden(`Enter the ${opts.purpose}: `, io, opts.signal);
      if (opts.confirm) {
        const again = await promptHidden(`Repeat the ${opts.purpose}: `, io, opts.signal);
        if (again !== value)
          throw new CliError('ERR_CLI_PASSPHRASE', 'the two passphrases differ', {
            exitCode: ExitCode.USAGE,
            hint: 'Run the command again and type the same passphrase twice',
          });
      }
      if (value.length === 0) throw new CliError('ERR_CLI_PASSPHRASE', 'the passphrase is empty', { exitCode: ExitCode.USAGE, hint: 'Type a passphrase' });
      break;
    }
    case 'none':
      throw usageError(`a ${opts.purpose} is needed but none was given and stdin is not a terminal to prompt on`, opts.noSourceHint ?? PASSPHRASE_SOURCES_HINT);
  }
  if (opts.minLength !== undefined && [...value].length < opts.minLength) {
    throw new CliError('ERR_CLI_PASSPHRASE', `the ${opts.purpose} is shorter than ${opts.minLength} characters`, {
      exitCode: ExitCode.USAGE,
      hint: `Choose a passphrase of at least ${opts.minLength} characters`,
    });
  }
  return value;
}

// Flags that name a passphrase but take no value, and options whose value is a file or a variable
// name (never the secret itself). Any other option that looks like it carries a secret is refused,
// and so is a value glued to one of the flags (`--recovery-passphrase=…`).
const PASSPHRASE_FLAGS = new Set([
  '--recovery-passphrase',
  '--add-recovery-passphrase',
  '--remove-recovery-passphrase',
  '--keep-recovery-passphrase',
  '--with-passphrase',
]);
const PASSPHRASE_SOURCES = new Set(['--passphrase-file', '--passphrase-env', '--home-passphrase-file', '--new-passphrase-file', '--new-passphrase-env']);
const SECRET_LIKE = /pass|secret|^--?pin$|key-?material/i;

/**
 * Refuse argv that carries a passphrase: `--passphrase X`, `--password=X`, `--recovery-passphrase=X`.
 * Runs before commander so that commander's own "unknown option '--passphrase=secret'" never
 * prints the secret. The message names only the option, never the value.
 */
export function rejectSecretsOnArgv(argv: readonly string[]): void {
  for (const arg of argv) {
    if (arg === '--') break;
    if (!arg.startsWith('-')) continue;
    const eq = arg.indexOf('=');
    const name = eq === -1 ? arg : arg.slice(0, eq);
    if (PASSPHRASE_SOURCES.has(name)) continue;
    if (PASSPHRASE_FLAGS.has(name) && eq === -1) continue;
    if (PASSPHRASE_FLAGS.has(name) || SECRET_LIKE.test(name)) {
      throw usageError(
        `${name} cannot carry a passphrase: vmseal never takes passphrases from the command line (they leak into shell history and the process list)`,
        `Use --passphrase-file F, --passphrase-env NAME, the ${DEFAULT_PASSPHRASE_ENV} environment variable, or the prompt`,
      );
    }
  }
}
