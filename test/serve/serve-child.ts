// `vmseal serve` as a child process for the tests that measure the server alone (its peak RSS,
// VmHWM of /proc/PID/status, is then the server's, not the test's) or read its log lines.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cleanEnv, vmsealChild } from '../cli/run-cli.js';
import { PASSPHRASE } from './helpers.js';

export interface ServeChild {
  /** The server's Unix socket. */
  socket: string;
  /** Everything the server wrote to stderr so far (its log lines). */
  stderr(): string;
  /** Peak resident set size of the server so far, MiB. */
  peakRssMiB(): number;
  /** SIGTERM, then wait for the exit (nothing when it has exited already). */
  stop(): Promise<void>;
}

/**
 * Serve the encrypted `disk` as export `name` on a socket in `dir`, unlocked with the tests'
 * passphrase (through a 0600 file in `dir`), with `--shared 32` and the `extra` arguments; resolves
 * once the server says it serves the export, rejects if it exits first.
 */
export async function startServeChild(dir: string, disk: string, name: string, extra: string[] = []): Promise<ServeChild> {
  const pw = join(dir, 'pw');
  writeFileSync(pw, `${PASSPHRASE}\n`, { mode: 0o600 });
  const socket = join(dir, 'nbd.sock');
  const server = vmsealChild(
    ['serve', disk, '--socket', socket, '--passphrase-file', pw, '--shared', '32', ...extra],
    cleanEnv({ VMSEAL_HOME: join(dir, 'home') }),
  );
  const exited = new Promise<void>((done) => server.on('close', () => done()));
  let stderr = '';
  server.stderr.on('data', (d) => (stderr += String(d)));
  const serving = new RegExp(`^vmseal: serving ${name} on `, 'm');
  await new Promise<void>((ready, fail) => {
    server.stderr.on('data', () => {
      if (serving.test(stderr)) ready();
    });
    void exited.then(() => fail(new Error(`serve exited: ${stderr}`)));
  });
  return {
    socket,
    stderr: () => stderr,
    peakRssMiB() {
      const status = readFileSync(`/proc/${server.pid}/status`, 'utf8');
      return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)![1]) / 1024;
    },
    async stop() {
      if (server.exitCode === null && server.signalCode === null) {
        server.kill('SIGTERM');
        await exited;
      }
    },
  };
}
