/**
 * Entry point of the `vmseal` command: bin/vmseal.js imports the build of this file (dist/cli/main.js).
 */
import { run } from './app.js';

const code = await run(process.argv.slice(2));
// Exit explicitly once stdout and stderr are flushed: a finished command must not linger on an
// idle socket or timer of a layer below (the key cache wipes its keys on 'exit').
let pending = 2;
const done = (): void => {
  pending -= 1;
  if (pending === 0) process.exit(code);
};
process.stdout.write('', done);
process.stderr.write('', done);
