/**
 * The `vmseal` command as a function: `run(argv)` parses and runs one command and returns its exit code; it never throws and never
 * calls process.exit itself, so it can be driven in-process too. Every error ends as one line on
 * stderr ("vmseal: <what failed>: <why>. <what to do>") and, with --json, one JSON object on stdout.
 */
import { CommanderError } from 'commander';
import { classify, CliError, formatError, reasonOf } from './errors.js';
import { ExitCode, type ExitCodeValue } from './exit-codes.js';
import { makeCtx, type Ctx } from './context.js';
import { Output, type Streams } from './output.js';
import { rejectSecretsOnArgv, type PromptIO } from './passphrase.js';
import { buildProgram } from './program.js';
import { abortOnSignals } from './signals.js';

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  streams?: Streams;
  io?: PromptIO;
  signal?: AbortSignal;
}

/** Global flags are read before commander so that even a parse error honours --json/--quiet. */
function globalFlags(argv: readonly string[]): { json: boolean; quiet: boolean; progress: boolean | undefined } {
  const before = argv.includes('--') ? argv.slice(0, argv.indexOf('--')) : argv;
  return {
    json: before.includes('--json'),
    quiet: before.includes('--quiet') || before.includes('-q'),
    progress: before.includes('--no-progress') ? false : undefined,
  };
}

/** The command name for --json output: the first one or two non-option words ("keys list"). */
function commandName(argv: readonly string[]): string {
  const words = argv.filter((a) => !a.startsWith('-'));
  if (words[0] === 'keys' && words[1]) return `keys ${words[1]}`;
  return words[0] ?? 'vmseal';
}

export async function run(argv: readonly string[], options: RunOptions = {}): Promise<ExitCodeValue> {
  const streams = options.streams ?? { stdout: process.stdout, stderr: process.stderr };
  const flags = globalFlags(argv);
  const output = new Output({ json: flags.json, quiet: flags.quiet, ...(flags.progress === false ? { progress: false } : {}) }, streams);
  const interruption = options.signal ? undefined : abortOnSignals();
  const signal = options.signal ?? interruption!.signal;
  const ctx: Ctx = makeCtx({
    output,
    signal,
    env: options.env ?? process.env,
    io: options.io ?? { input: process.stdin, output: process.stderr },
  });
  ctx.command = commandName(argv);
  ctx.doing = ctx.command === 'vmseal' ? 'usage' : ctx.command;
  try {
    rejectSecretsOnArgv(argv);
    const program = buildProgram(ctx, streams, argv);
    await program.parseAsync([...argv], { from: 'user' });
    return ctx.exitCode;
  } catch (err) {
    return report(ctx, err);
  } finally {
    interruption?.dispose();
  }
}

function report(ctx: Ctx, err: unknown): ExitCodeValue {
  if (err instanceof CommanderError) {
    // --help and --version end through here too, with exit code 0.
    if (err.exitCode === 0) return ExitCode.OK;
    // `vmseal` or `vmseal keys` without a command: commander has printed the help already.
    if (err.code === 'commander.help' || err.message === '(outputHelp)') return ExitCode.USAGE;
    const message = err.message.replace(/^error:\s*/i, '').replace(/\s*\n\s*\(Did you mean (.*)\?\)/, ' (did you mean $1?)');
    const unknownCommand = err.code === 'commander.unknownCommand';
    return report(ctx, new CliError('ERR_CLI_USAGE', message, { exitCode: ExitCode.USAGE, hint: helpHint(ctx, unknownCommand) }));
  }
  const { exitCode, unexpected } = classify(err, ctx.command);
  const interrupted = exitCode === ExitCode.INTERRUPTED;
  const line = interrupted
    ? `vmseal: ${ctx.doing.replace(/^cannot /, '')}: interrupted; ${ctx.interruptNote ?? 'nothing was left behind'}.`
    : formatError(ctx.doing, err, ctx.command);
  ctx.output.error(line);
  if (unexpected && ctx.env.VMSEAL_DEBUG) ctx.output.error(String((err as Error)?.stack ?? err));
  ctx.output.result({
    ok: false,
    command: ctx.command,
    error: {
      code: typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : 'ERR_UNEXPECTED',
      message: interrupted ? 'interrupted' : reasonOf(err),
      exitCode,
    },
  });
  return exitCode;
}

function helpHint(ctx: Ctx, unknownCommand = false): string {
  // For an unknown command, point at the help of the level above it ("vmseal keys lst" → "vmseal keys").
  const words = ctx.command === 'vmseal' ? [] : ctx.command.split(' ');
  if (unknownCommand) words.pop();
  const cmd = words.length > 0 ? ` ${words.join(' ')}` : '';
  return `Run \`vmseal${cmd} --help\` for usage`;
}
