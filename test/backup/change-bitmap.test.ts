// The change bitmap `<disk>.vmseal-ctk` kept by `vmseal serve` (a real server process, written by a
// real qemu-io over NBD): after a clean stop an incremental `backup create` reads only the chunks
// written, and its point lists exactly what a full read gives; after a SIGKILL of the server, or a
// generation change of the disk (a shallow rekey here), the bitmap is not used and every allocated
// chunk is read.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createBackup, deepRekey, initRepository, shallowRekey } from '../../src/index.js';
import { readPoint } from '../../src/backup/points.js';
import { openRepository } from '../../src/backup/repository.js';
import { tempDir, phraseLocker } from '../disk/helpers.js';
import { cleanEnv, json, vmseal, vmsealChild } from '../cli/run-cli.js';
import { run } from './helpers.js';
import { encryptedDisk, PASSPHRASE, startHost } from '../serve/helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-ctk-');
});
afterAll(() => tmp?.cleanup());

/** `vmseal serve DISK` as a child; resolves once it serves. */
async function serveChild(disk: string, name: string): Promise<{ socket: string; stop(signal: NodeJS.Signals): Promise<void> }> {
  const pw = join(tmp.dir, 'pw');
  writeFileSync(pw, `${PASSPHRASE}\n`, { mode: 0o600 });
  const socket = join(tmp.dir, `${name}.sock`);
  const server = vmsealChild(['serve', disk, '--socket', socket, '--passphrase-file', pw], cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home') }));
  const exited = new Promise<void>((done) => server.on('close', () => done()));
  let err = '';
  await new Promise<void>((ready, fail) => {
    server.stderr.on('data', (d) => {
      err += String(d);
      if (new RegExp(`^vmseal: serving ${name} on `, 'm').test(err)) ready();
    });
    void exited.then(() => fail(new Error(`serve exited: ${err}`)));
  });
  return {
    socket,
    async stop(signal) {
      if (server.exitCode === null && server.signalCode === null) server.kill(signal);
      await exited;
    },
  };
}

/** Write with qemu-io over NBD: each [offset, length] gets pattern `pattern`. */
async function writeOverNbd(socket: string, name: string, writes: Array<[number, number]>, pattern: number): Promise<void> {
  const args = ['-f', 'raw'];
  for (const [off, len] of writes) args.push('-c', `write -P ${pattern} ${off} ${len}`);
  args.push('-c', 'flush', `nbd+unix:///${name}?socket=${socket}`);
  await run('qemu-io', args);
}

async function chunksOf(repoPath: string, point: string): Promise<Array<[number, string]>> {
  const repo = await openRepository(repoPath);
  return (await readPoint(repo, point)).layers[0]!.chunks;
}

describe('change bitmap of vmseal serve', () => {
  it('a backup after a clean stop reads only the changed chunks; its point equals a full read', async () => {
    const content = Buffer.alloc(10 * MiB, 0x5a);
    const disk = await encryptedDisk(tmp.dir, 'ctk', { subformat: 'monolithicSparse', capacity: 64 * MiB, content });
    const repo = join(tmp.dir, 'repo');
    await initRepository(repo);
    const first = await createBackup(disk, repo);
    expect(first.changeBitmap.used).toBe(false);
    expect(first.chunksRead).toBe(10);
    expect(existsSync(`${disk}.vmseal-ctk`)).toBe(true); // the baseline on the point just made

    const s = await serveChild(disk, 'ctk');
    // Chunk 3 (inside the old data), chunks 20 and 21 (one write across their boundary), chunk 40.
    await writeOverNbd(
      s.socket,
      'ctk',
      [
        [3 * MiB + 4096, 4096],
        [21 * MiB - 65536, 131072],
        [40 * MiB, 512],
      ],
      0x11,
    );
    await s.stop('SIGTERM');

    const second = await createBackup(disk, repo);
    expect(second.changeBitmap).toEqual({ used: true, base: first.point });
    expect(second.chunksRead).toBe(4);
    expect(second.bytesRead).toBe(4 * MiB);
    expect(second.chunks).toBe(13);

    // A full read of the same disk (another repository: the bitmap's base does not match there).
    const other = join(tmp.dir, 'repo-full');
    await initRepository(other);
    const full = await createBackup(disk, other);
    expect(full.changeBitmap.used).toBe(false);
    expect(full.chunksRead).toBe(13);
    expect(await chunksOf(repo, second.point)).toEqual(await chunksOf(other, full.point));

    // Nothing written since the last point (of `other`, which now is the base): a backup there reads nothing.
    const none = await createBackup(disk, other);
    expect(none.changeBitmap.used).toBe(true);
    expect(none.chunksRead).toBe(0);
    expect(await chunksOf(other, none.point)).toEqual(await chunksOf(other, full.point));
  });

  it('marks the chunks of WRITE_ZEROES and TRIM too', async () => {
    const disk = await encryptedDisk(tmp.dir, 'zeroes', { subformat: 'monolithicSparse', capacity: 32 * MiB, content: Buffer.alloc(12 * MiB, 0x6b) });
    const repo = join(tmp.dir, 'repo-zeroes');
    await initRepository(repo);
    const first = await createBackup(disk, repo);
    const s = await serveChild(disk, 'zeroes');
    // Zeros over chunk 5 (may unmap: its whole grains deallocated) and part of chunk 7; chunk 9 trimmed.
    await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      `write -z -u ${5 * MiB} ${MiB}`,
      '-c',
      `write -z ${7 * MiB + 4096} 8192`,
      '-c',
      `discard ${9 * MiB} ${MiB}`,
      '-c',
      'flush',
      `nbd+unix:///zeroes?socket=${s.socket}`,
    ]);
    await s.stop('SIGTERM');
    const second = await createBackup(disk, repo);
    expect(second.changeBitmap).toEqual({ used: true, base: first.point });
    expect(second.chunksRead).toBe(3);
    expect(second.chunks).toBe(10); // chunks 5 and 9 are holes now
    const other = join(tmp.dir, 'repo-zeroes-full');
    await initRepository(other);
    const full = await createBackup(disk, other);
    expect(await chunksOf(repo, second.point)).toEqual(await chunksOf(other, full.point));
  });

  it('works on a flat disk too (descriptor in a text file)', async () => {
    const disk = await encryptedDisk(tmp.dir, 'flat', { subformat: 'monolithicFlat', capacity: 8 * MiB, content: Buffer.alloc(MiB, 0x19) });
    const repo = join(tmp.dir, 'repo-flat');
    await initRepository(repo);
    const first = await createBackup(disk, repo);
    expect(first.chunksRead).toBe(8);
    const s = await serveChild(disk, 'flat');
    await writeOverNbd(s.socket, 'flat', [[5 * MiB, 4096]], 0x20);
    await s.stop('SIGINT');
    const second = await createBackup(disk, repo);
    expect(second.changeBitmap).toEqual({ used: true, base: first.point });
    expect(second.chunksRead).toBe(1);
  });

  it('a write into an extent file that leaves the descriptor alone (dd) makes the next backup read everything', async () => {
    const disk = await encryptedDisk(tmp.dir, 'dd', { subformat: 'monolithicFlat', capacity: 8 * MiB, content: Buffer.alloc(MiB, 0x44) });
    const repo = join(tmp.dir, 'repo-dd');
    await initRepository(repo);
    const first = await createBackup(disk, repo);
    const s = await serveChild(disk, 'dd');
    await writeOverNbd(s.socket, 'dd', [[2 * MiB, 4096]], 0x45);
    await s.stop('SIGTERM');
    // The descriptor stays byte for byte as the server left it; only the extent's bytes change.
    const descriptor = readFileSync(disk);
    const extent = join(
      tmp.dir,
      readdirSync(tmp.dir).find((f) => f.startsWith('dd') && f.endsWith('-flat.vmdk'))!,
    );
    const fd = openSync(extent, 'r+');
    try {
      writeSync(fd, Buffer.alloc(4096, 0xee), 0, 4096, 6 * MiB);
    } finally {
      closeSync(fd);
    }
    expect(readFileSync(disk)).toEqual(descriptor);
    const second = await createBackup(disk, repo);
    expect(second.changeBitmap.used ? '' : second.changeBitmap.why).toMatch(/another generation/);
    expect(second.chunksRead).toBe(8);
    // The chunk written behind vmseal's back is in the point (its hash differs from the first point's).
    const before = new Map(await chunksOf(repo, first.point));
    const after = new Map(await chunksOf(repo, second.point));
    expect(after.get(6 * MiB)).not.toBe(before.get(6 * MiB));
  });

  it('after a SIGKILL of the server the bitmap is discarded and every allocated chunk is read', async () => {
    const disk = await encryptedDisk(tmp.dir, 'kill', { subformat: 'monolithicSparse', capacity: 32 * MiB, content: Buffer.alloc(6 * MiB, 0x33) });
    const repo = join(tmp.dir, 'repo-kill');
    await initRepository(repo);
    await createBackup(disk, repo);
    const s = await serveChild(disk, 'kill');
    await writeOverNbd(s.socket, 'kill', [[MiB, 4096]], 0x44);
    await s.stop('SIGKILL');
    const after = await createBackup(disk, repo);
    expect(after.changeBitmap.used).toBe(false);
    expect(after.changeBitmap.used ? '' : after.changeBitmap.why).toMatch(/dirty/);
    expect(after.chunksRead).toBe(6);
    // That backup made a new baseline: the next one (nothing written) uses it; the CLI says so.
    const cli = await vmseal(['backup', 'create', disk, repo, '--json'], cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home') }));
    expect(cli.code).toBe(0);
    expect(json(cli)).toMatchObject({ chunksRead: 0, changeBitmap: { used: true } });
    const plainCli = await vmseal(['backup', 'create', disk, repo], cleanEnv({ VMSEAL_HOME: join(tmp.dir, 'home') }));
    expect(plainCli.stderr).toMatch(/read 0 chunks/);
    expect(plainCli.stderr).toMatch(/read only the chunks changed since point /);
  });

  it('a generation change (shallow, then deep rekey) makes the next backup read everything', async () => {
    const disk = await encryptedDisk(tmp.dir, 'gen', { subformat: 'monolithicFlat', capacity: 8 * MiB, content: Buffer.alloc(MiB, 0x77) });
    const repo = join(tmp.dir, 'repo-gen');
    await initRepository(repo);
    await createBackup(disk, repo);
    expect((await createBackup(disk, repo)).chunksRead).toBe(0);
    await shallowRekey(disk, { keys: { passphrase: PASSPHRASE }, lockers: [phraseLocker('another passphrase')] });
    const after = await createBackup(disk, repo);
    expect(after.changeBitmap.used ? '' : after.changeBitmap.why).toMatch(/another generation/);
    expect(after.chunksRead).toBe(8); // a flat encrypted disk is allocated everywhere
    expect(after.newChunks).toBe(0); // same DEK, same ciphertext: every chunk is in the repository
    await deepRekey(disk, { keys: { passphrase: 'another passphrase' }, lockers: [phraseLocker(PASSPHRASE)] });
    const deep = await createBackup(disk, repo);
    expect(deep.changeBitmap.used ? '' : deep.changeBitmap.why).toMatch(/another generation/);
    expect(deep.chunksRead).toBe(8);
    expect(deep.newChunks).toBe(8); // a new DEK: every chunk is new
  });

  it("a live snapshot keeps the frozen layer's bits: its backup reads only the chunks written before it", async () => {
    const disk = await encryptedDisk(tmp.dir, 'live', { subformat: 'monolithicSparse', capacity: 16 * MiB, content: Buffer.alloc(4 * MiB, 0x61) });
    const repo = join(tmp.dir, 'repo-live');
    await initRepository(repo);
    const first = await createBackup(disk, repo);
    const { host, socket } = await startHost(tmp.dir, [{ path: disk, name: 'live' }]);
    let top = '';
    try {
      await writeOverNbd(socket, 'live', [[9 * MiB, 8192]], 0x62);
      const snap = await host.snapshot('live');
      top = snap.path;
      await writeOverNbd(socket, 'live', [[MiB, 4096]], 0x63); // lands in the child, not in the frozen layer
      const frozen = await createBackup(snap.parent, repo);
      expect(frozen.changeBitmap).toEqual({ used: true, base: first.point });
      expect(frozen.chunksRead).toBe(1);
      expect(frozen.chunks).toBe(5);
    } finally {
      await host.close();
    }
    expect(existsSync(top)).toBe(true);
    expect(existsSync(`${top}.vmseal-ctk`)).toBe(true); // the top of a chain is tracked too
  });

  it("a bitmap file that cannot be written does not fail the client's writes; the disk is then not tracked", async () => {
    const disk = await encryptedDisk(tmp.dir, 'nofile', { subformat: 'monolithicSparse', capacity: 8 * MiB, content: Buffer.alloc(MiB, 0x71) });
    mkdirSync(`${disk}.vmseal-ctk`); // a folder in its place: the atomic rename over it fails
    const s = await serveChild(disk, 'nofile');
    try {
      await writeOverNbd(s.socket, 'nofile', [[2 * MiB, 4096]], 0x72);
    } finally {
      await s.stop('SIGTERM');
    }
    const repo = join(tmp.dir, 'repo-nofile');
    await initRepository(repo);
    const r = await createBackup(disk, repo);
    expect(r.changeBitmap.used).toBe(false);
    expect(r.chunksRead).toBe(2); // chunk 0 and chunk 2, which the write allocated: it went through
  });

  it('a damaged bitmap is not used', async () => {
    const disk = await encryptedDisk(tmp.dir, 'bad', { subformat: 'monolithicSparse', capacity: 8 * MiB, content: Buffer.alloc(2 * MiB, 0x21) });
    const repo = join(tmp.dir, 'repo-bad');
    await initRepository(repo);
    await createBackup(disk, repo);
    const file = `${disk}.vmseal-ctk`;
    const bytes = readFileSync(file);
    bytes[bytes.length - 1] ^= 1; // a bit flipped: the checksum no longer holds
    writeFileSync(file, bytes);
    const after = await createBackup(disk, repo);
    expect(after.changeBitmap.used ? '' : after.changeBitmap.why).toMatch(/checksum/);
    expect(after.chunksRead).toBe(2);
    writeFileSync(file, Buffer.alloc(5000)); // another size than the capacity implies
    const sized = await createBackup(disk, repo);
    expect(sized.changeBitmap.used ? '' : sized.changeBitmap.why).toMatch(/5000 bytes/);
  });
});
