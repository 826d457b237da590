/**
 * What every command gets: where to print, the interruption signal, the environment, the
 * terminal to prompt on, and a place to say what it is doing (the "what failed" part of an
 * error line) and which exit code it ends with.
 */
import type { ExitCodeValue } from './exit-codes.js';
import { ExitCode } from './exit-codes.js';
import type { Output } from './output.js';
import type { PromptIO } from './passphrase.js';

export interface Ctx {
  output: Output;
  signal: AbortSignal;
  env: NodeJS.ProcessEnv;
  io: PromptIO;
  /** The command being run ("encrypt", "keys list", …), for --json and error lines. */
  command: string;
  /** What is being attempted, for the error line: "cannot encrypt disk.img". */
  doing: string;
  /** What an interruption leaves for the user to do (default: nothing was left behind). */
  interruptNote?: string;
  /** The exit code when the command returns without throwing (verify mismatch, batch failures). */
  exitCode: ExitCodeValue;
}

export function makeCtx(parts: Pick<Ctx, 'output' | 'signal' | 'env' | 'io'>): Ctx {
  return { ...parts, command: 'vmseal', doing: 'vmseal', exitCode: ExitCode.OK };
}
