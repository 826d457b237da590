// `vmseal serve` run as a user runs it, for the CLI tests of serve and host: one temp folder with a
// VMSEAL_HOME and a 0600 passphrase file, server children started until a log line says they are
// ready, and everything killed and removed after the file's tests.
import { afterAll, beforeAll } from 'vitest';
import type { ChildProcessByStdio } from 'node:child_process';
import type { Readable } from 'node:stream';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmsealChild } from './run-cli.js';
import { PASSPHRASE } from '../serve/helpers.js';

export type Served = ChildProcessByStdio<null, Readable, Readable>;

export interface ServeProcess {
  child: Served;
  /** Everything the server wrote to stderr so far. */
  stderr(): string;
  /** Everything the server wrote to stdout so far. */
  stdout(): string;
  /** The exit code once the server has exited (null when killed by a signal). */
  exit: Promise<number | null>;
}

export interface ServeFixture {
  /** The test file's temp folder. */
  dir(): string;
  /** The environment of every vmseal run: VMSEAL_HOME in the temp folder, no XDG_RUNTIME_DIR. */
  env(): NodeJS.ProcessEnv;
  /** A 0600 file holding the tests' passphrase. */
  pwFile(): string;
  /**
   * Start `vmseal serve …args` and resolve once `ready` matches its stderr; rejects, with the
   * server's log, if it exits first.
   */
  start(args: string[], ready: (stderr: string) => boolean, env?: NodeJS.ProcessEnv): Promise<ServeProcess>;
}

/** Register the set-up and clean-up of a test file that runs `vmseal serve` children. */
export function serveFixture(prefix: string): ServeFixture {
  let tmp: ReturnType<typeof tempDir> | undefined;
  let env: NodeJS.ProcessEnv = {};
  let pwFile = '';
  const children: Served[] = [];

  beforeAll(() => {
    tmp = tempDir(prefix);
    // No XDG_RUNTIME_DIR: each server's default control socket then goes into this test's
    // VMSEAL_HOME, never into the user's runtime folder.
    env = cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home'), XDG_RUNTIME_DIR: undefined });
    pwFile = join(tmp.dir, 'pw');
    writeFileSync(pwFile, `${PASSPHRASE}\n`, { mode: 0o600 });
  });

  afterAll(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    tmp?.cleanup();
  });

  async function start(args: string[], ready: (stderr: string) => boolean, childEnv = env): Promise<ServeProcess> {
    return startServeProcess(args, ready, childEnv, children);
  }

  return { dir: () => tmp!.dir, env: () => env, pwFile: () => pwFile, start };
}

/**
 * Start `vmseal serve …args` with `env` and resolve once `ready` matches its stderr; rejects, with
 * the server's log, if it exits first. The child is added to `children` (to be killed by the
 * caller's clean-up) before anything can fail.
 */
export async function startServeProcess(
  args: string[],
  ready: (stderr: string) => boolean,
  env: NodeJS.ProcessEnv,
  children: Served[] = [],
): Promise<ServeProcess> {
  const child = vmsealChild(['serve', ...args], env);
  children.push(child);
  let err = '';
  let out = '';
  child.stdout.on('data', (d) => (out += String(d)));
  const exit = new Promise<number | null>((done) => child.on('close', (code) => done(code)));
  await new Promise<void>((resolve, fail) => {
    child.stderr.on('data', (d) => {
      err += String(d);
      if (ready(err)) resolve();
    });
    void exit.then((code) => fail(new Error(`vmseal serve exited with ${code}: ${err}`)));
  });
  return { child, stderr: () => err, stdout: () => out, exit };
}
