/**
 * Entry point of the `vmseal` command: bin/vmseal.js imports the build of this file (dist/cli/main.js).
 */
import { run } from './app.js';
import { ExitCode } from './exit-codes.js';

// A failure outside any command's promise chain is a bug: one line (the stack only with
// VMSEAL_DEBUG=1), exit 70, instead of Node's multi-line crash report.
function crash(err: unknown): void {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(
    `vmseal: internal error: ${message.replace(/\s*\n\s*/g, '; ')}. This is a bug in vmseal: please report it (VMSEAL_DEBUG=1 prints the stack trace).\n`,
  );
  if (process.env.VMSEAL_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  process.exit(ExitCode.INTERNAL);
}
process.on('uncaughtException', crash);
// `vmseal info disk.vmdk | head -1`: the reader went away; nothing left to say to it.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(ExitCode.OK);
  crash(err);
});
process.on('unhandledRejection', crash);

// No top-level await: the CLI is a CommonJS bundle (tsup.config.ts), and an ES module's await
// would be the only reason to pay for Node's ES-module loader.
void run(process.argv.slice(2)).then((code) => {
  // Exit explicitly once stdout and stderr are flushed: a finished command must not linger on an
  // idle socket or timer of a layer below (the key cache wipes its keys on 'exit').
  let pending = 2;
  const done = (): void => {
    pending -= 1;
    if (pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}, crash);
