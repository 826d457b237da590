// The server killed with SIGKILL in the middle of a write load: every write acknowledged before the
// kill is on the disk (SIGKILL keeps the page cache, so this checks ordering and metadata, not power
// loss), the sparse disk passes `qemu-img check`, and it still opens and decrypts.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openDisk } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmsealChild } from '../cli/run-cli.js';
import { encryptedDisk, KEYS, PASSPHRASE, run } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-kill-');
});
afterAll(() => tmp?.cleanup());

describe('SIGKILL during writes', () => {
  it('keeps every acknowledged write and a well-formed sparse disk', async () => {
    const size = 32 * MiB;
    const disk = await encryptedDisk(tmp.dir, 'k', { subformat: 'monolithicSparse', capacity: size });
    const pw = join(tmp.dir, 'pw');
    writeFileSync(pw, `${PASSPHRASE}\n`, { mode: 0o600 });
    const socket = join(tmp.dir, 'nbd.sock');
    const server = vmsealChild(
      ['serve', disk, '--socket', socket, '--passphrase-file', pw],
      cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home'), XDG_RUNTIME_DIR: undefined }),
    );
    const serverExit = new Promise<void>((done) => server.on('close', () => done()));
    try {
      await new Promise<void>((ready, fail) => {
        let err = '';
        server.stderr.on('data', (d) => {
          err += String(d);
          if (/^vmseal: serving k on /m.test(err)) ready();
        });
        void serverExit.then(() => fail(new Error(`serve exited: ${err}`)));
      });
      // 120 writes of 256 KiB at scattered offsets (each allocates grains), a flush every 10.
      const writes: Array<[number, number]> = [];
      const args = ['-f', 'raw'];
      for (let i = 0; i < 120; i++) {
        const off = ((i * 7919) % 120) * 256 * 1024 + (i % 3) * 4096;
        writes.push([off, 1 + (i % 250)]);
        args.push('-c', `write -P ${1 + (i % 250)} ${off} 65536`);
        if (i % 10 === 9) args.push('-c', 'flush');
      }
      // stdbuf: qemu-io's stdout is a pipe here, and its lines must come as each write is acknowledged.
      const client = spawn('stdbuf', ['-oL', 'qemu-io', ...args, `nbd+unix:///k?socket=${socket}`], { stdio: ['ignore', 'pipe', 'pipe'] });
      const clientExit = new Promise<void>((done) => client.on('close', () => done()));
      // qemu-io prints "wrote …" once each write is acknowledged; kill the server after the 45th.
      let acked = 0;
      await new Promise<void>((killed) => {
        let out = '';
        client.stdout.on('data', (d) => {
          out += String(d);
          acked = (out.match(/^wrote /gm) ?? []).length;
          if (acked >= 45 && server.exitCode === null && server.signalCode === null) {
            server.kill('SIGKILL');
            killed();
          }
        });
        void clientExit.then(() => killed());
      });
      await serverExit;
      await clientExit;
      expect(acked).toBeGreaterThanOrEqual(45);
      // Killed mid-load: qemu-io could not finish its list.
      expect(acked).toBeLessThan(120);

      expect(await run('qemu-img', ['check', disk])).toMatch(/No errors/);
      // The last write wins where offsets overlap: compare each acknowledged write not overwritten later.
      const d = await openDisk(disk, { keys: KEYS, readOnly: true });
      try {
        for (let i = 0; i < acked; i++) {
          const [off, pat] = writes[i];
          const later = writes.slice(i + 1, acked).some(([o]) => o < off + 65536 && off < o + 65536);
          if (later) continue;
          const got = await d.read(off, 65536);
          expect(got.equals(Buffer.alloc(65536, pat)), `write ${i} at ${off}`).toBe(true);
        }
      } finally {
        await d.close();
      }
    } finally {
      if (server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
      await serverExit;
    }
  });
});
