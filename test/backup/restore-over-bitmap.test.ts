// A quick rollback (`backup restore --over`) with the disk's change bitmap (`<disk>.vmseal-ctk`, kept
// by a real `vmseal serve`, written by a real qemu-io over NBD): when the bitmap is valid and counts
// from the very point rolled back to, only the chunks it marks are compared and rewritten; a bitmap
// counting from another point is not used (every chunk is compared), so the disk is the point either way.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createBackup, initRepository, restoreBackup, restoreBackupOver } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { cleanEnv, vmsealChild } from '../cli/run-cli.js';
import { qemuDataBytes, run } from './helpers.js';
import { encryptedDisk, PASSPHRASE } from '../serve/helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-over-ctk-');
});
afterAll(() => tmp?.cleanup());

/** Serve `disk` with `vmseal serve`, write each chunk of `chunks` with qemu-io over NBD, stop it with SIGTERM (a clean bitmap). */
async function writeThroughServe(disk: string, name: string, chunks: number[], pattern: number): Promise<void> {
  const pw = join(tmp.dir, 'pw');
  writeFileSync(pw, `${PASSPHRASE}\n`, { mode: 0o600 });
  const socket = join(tmp.dir, `${name}.sock`);
  const server = vmsealChild(['serve', disk, '--socket', socket, '--passphrase-file', pw], cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home') }));
  const exited = new Promise<void>((done) => server.on('close', () => done()));
  try {
    let err = '';
    await new Promise<void>((ready, fail) => {
      server.stderr.on('data', (d) => {
        err += String(d);
        if (new RegExp(`^vmseal: serving ${name} on `, 'm').test(err)) ready();
      });
      void exited.then(() => fail(new Error(`serve exited: ${err}`)));
    });
    const args = ['-f', 'raw'];
    for (const c of chunks) args.push('-c', `write -P ${pattern} ${c * MiB} ${MiB}`);
    args.push('-c', 'flush', `nbd+unix:///${name}?socket=${socket}`);
    await run('qemu-io', args);
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGTERM');
    await exited;
  }
}

describe('quick rollback with the change bitmap', () => {
  it('compares only the marked chunks when the bitmap counts from the point, every chunk otherwise', async () => {
    const disk = await encryptedDisk(tmp.dir, 'over', { subformat: 'monolithicSparse', capacity: 64 * MiB, content: Buffer.alloc(10 * MiB, 0x5a) });
    const repo = join(tmp.dir, 'repo');
    await initRepository(repo);
    const p = await createBackup(disk, repo); // leaves a clean, empty bitmap counting from p
    mkdirSync(join(tmp.dir, 'out'));
    const pCopy = join(tmp.dir, 'out', 'p.vmdk');
    await restoreBackup(repo, p.point, pCopy);
    const same = (a: string, b: string): boolean => spawnSync('qemu-img', ['compare', '-q', a, b]).status === 0;

    // Chunk 3 (inside the data) and chunk 40 (newly allocated) written through the server.
    await writeThroughServe(disk, 'over', [3, 40], 0x11);
    // Chunk 7 written again with what it held (the same ciphertext: XTS is deterministic): marked, but the point's.
    await writeThroughServe(disk, 'over', [7], 0x5a);
    const back = await restoreBackupOver(repo, p.point, disk);
    expect(back).toMatchObject({ chunksWritten: 2, chunksSame: 1 }); // the 9 other allocated chunks were not even compared
    expect(same(pCopy, disk)).toBe(true);
    expect(await qemuDataBytes(disk)).toBe(await qemuDataBytes(pCopy));

    // q (the disk as p), then r after chunk 5 changed: the bitmap now counts from r.
    const q = await createBackup(disk, repo);
    await writeThroughServe(disk, 'over', [5], 0x22);
    const r = await createBackup(disk, repo);
    expect(r.changeBitmap).toEqual({ used: true, base: q.point });
    await writeThroughServe(disk, 'over', [41], 0x33);
    // Back to q, which is not the bitmap's base: every chunk is compared (chunk 5 too, unmarked since r).
    const toQ = await restoreBackupOver(repo, q.point, disk);
    expect(toQ.chunksWritten).toBe(2);
    expect(toQ.chunksSame).toBe(9); // chunks 0-9 but 5
    expect(same(pCopy, disk)).toBe(true);
  });
});
