// The UEFI variables of a qemu VM folder served as a small encrypted export (`vmseal serve --vm`):
// real clients (nbdcopy, qemu-io) write and read it, the file at rest never holds the plaintext and
// stays a state file that decrypts, a restart reads the writes back, and a server killed with
// SIGKILL in the middle of writes leaves the old variables or the new, never a mix.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve } from '../../src/index.js';
import { vmServeDisks } from '../../src/serve/index.js';
import { decryptStateFile, encryptStateFile, readStateFileHeader, STATE_TAG_BYTES, type VmError } from '../../src/vm/index.js';
import { cleanEnv, vmsealChild } from '../cli/run-cli.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { encryptedDisk, KEYS, PASSPHRASE, random, run, unixUri } from './helpers.js';

/** The size of OVMF's 4 MiB build's variables file. */
const VARS_BYTES = 540_672;
const MARKER = 'VMSEAL-UEFI-VARS-PLAINTEXT-MARKER';

let tmp: ReturnType<typeof tempDir>;
let seq = 0;
beforeAll(() => {
  tmp = tempDir('vmseal-vars-');
});
afterAll(() => tmp?.cleanup());

/** A qemu VM folder: an encrypted disk (or a plain one), encrypted UEFI variables, the manifest. */
async function vmFolder(opts: { plainDisk?: boolean } = {}): Promise<{ dir: string; vars: string; plain: Buffer }> {
  const dir = join(tmp.dir, `vm${seq++}`);
  mkdirSync(dir);
  await encryptedDisk(dir, 'disk0', { subformat: 'monolithicSparse', capacity: 1 << 20 });
  const disks = [{ file: 'disk0.vmdk' }];
  if (opts.plainDisk) {
    writeFileSync(join(dir, 'disk1.img'), Buffer.alloc(1 << 20));
    disks.push({ file: 'disk1.img' });
  }
  const plain = random(VARS_BYTES);
  writeFileSync(join(dir, 'vars.plain'), plain);
  const vars = join(dir, 'OVMF_VARS.fd');
  await encryptStateFile(join(dir, 'vars.plain'), vars, { lockers: [phraseLocker(PASSPHRASE)] });
  writeFileSync(join(dir, 'vars.plain'), Buffer.alloc(0));
  writeFileSync(join(dir, 'vmseal-vm.json'), JSON.stringify({ format: 'vmseal-vm', version: 1, name: 'vm1', disks, uefiVars: { file: 'OVMF_VARS.fd' } }));
  return { dir, vars, plain };
}

async function decrypted(vars: string): Promise<Buffer> {
  const out = join(tmp.dir, `dec${seq++}`);
  await decryptStateFile(vars, out, { keys: KEYS });
  return readFileSync(out);
}

function tempFilesOf(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.includes('.tmp-'));
}

describe('vmServeDisks and serve()', () => {
  it('serves the disks and <name>-vars; writes reach the file encrypted and survive a restart', async () => {
    const { dir, vars, plain } = await vmFolder();
    const disks = await vmServeDisks(dir);
    expect(disks.map((d) => d.name ?? 'default')).toEqual(['default', 'vm1-vars']);
    const socket = join(dir, 'nbd.sock');
    let host = await serve({ disks, listen: { socket }, keys: KEYS });
    try {
      const info = host.exports().find((e) => e.name === 'vm1-vars')!;
      expect(info).toMatchObject({ size: VARS_BYTES, encrypted: true, readOnly: false, sparse: false });
      const uri = unixUri(socket, 'vm1-vars');
      const out1 = join(tmp.dir, `out${seq++}`);
      await run('nbdcopy', [uri, out1]);
      expect(readFileSync(out1).equals(plain)).toBe(true);

      // The firmware's writes: the whole store, then small unaligned writes.
      const next = Buffer.from(plain);
      next.write(MARKER, 0x1000, 'latin1');
      next.write(MARKER, 0x80000, 'latin1');
      const src = join(tmp.dir, `src${seq++}`);
      writeFileSync(src, next);
      await run('nbdcopy', [src, uri]);
      await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 4097 3', '-c', 'write -P 0xa5 540670 2', uri]);
      next.fill(0x5a, 4097, 4100);
      next.fill(0xa5, 540670, 540672);
      const out2 = join(tmp.dir, `out${seq++}`);
      await run('nbdcopy', [uri, out2]);
      expect(readFileSync(out2).equals(next)).toBe(true);

      // At rest: a state file of version 2 of the same length, no plaintext, no temp file left.
      const atRest = readFileSync(vars);
      expect(atRest.includes(MARKER)).toBe(false);
      expect(atRest.includes(next.subarray(0x2000, 0x2040))).toBe(false);
      const header = await readStateFileHeader(vars);
      expect(header.version).toBe(2);
      expect(atRest.length).toBe(header.headerBytes + VARS_BYTES + STATE_TAG_BYTES);
      expect(tempFilesOf(dir)).toEqual([]);
      expect((await decrypted(vars)).equals(next)).toBe(true);

      await host.close();
      host = await serve({ disks, listen: { socket }, keys: KEYS });
      const out3 = join(tmp.dir, `out${seq++}`);
      await run('nbdcopy', [uri, out3]);
      expect(readFileSync(out3).equals(next)).toBe(true);
    } finally {
      await host.close();
    }
  });

  it('a write past the end is refused and changes nothing', async () => {
    const { dir, vars, plain } = await vmFolder();
    const socket = join(dir, 'nbd.sock');
    const host = await serve({ disks: await vmServeDisks(dir), listen: { socket }, keys: KEYS });
    try {
      await expect(run('qemu-io', ['-f', 'raw', '-c', `write -P 1 ${VARS_BYTES - 1} 2`, unixUri(socket, 'vm1-vars')])).rejects.toThrow();
    } finally {
      await host.close();
    }
    expect((await decrypted(vars)).equals(plain)).toBe(true);
  });

  it('a live snapshot of the variables export is refused: a state file has no layers', async () => {
    const { dir, vars, plain } = await vmFolder();
    const socket = join(dir, 'nbd.sock');
    const host = await serve({ disks: await vmServeDisks(dir), listen: { socket }, keys: KEYS });
    try {
      const err = (await host.snapshot('vm1-vars').catch((e: unknown) => e)) as { code: string; message: string };
      expect(err.code).toBe('ERR_SERVE_EXPORT');
      expect(err.message).toContain('has no snapshots');
      expect(host.exports().find((e) => e.name === 'vm1-vars')).toMatchObject({ path: vars });
    } finally {
      await host.close();
    }
    expect((await decrypted(vars)).equals(plain)).toBe(true);
  });

  it('a mixed VM is refused, naming the disks in each state, unless allowMixed', async () => {
    const { dir } = await vmFolder({ plainDisk: true });
    const err = (await vmServeDisks(dir).catch((e: unknown) => e)) as VmError;
    expect(err.code).toBe('ERR_VM_MIXED');
    expect(err.message).toContain('encrypted disks: disks[0] (disk0.vmdk)');
    expect(err.message).toContain('plain disks: disks[1] (disk1.img)');
    expect(await vmServeDisks(dir, { allowMixed: true })).toHaveLength(3);
  });
});

describe('vmseal serve --vm, killed with SIGKILL during writes', () => {
  it('leaves the variables of one whole write, which decrypt; the next start removes the temp files', async () => {
    const { dir, vars } = await vmFolder();
    const pw = join(dir, 'pw');
    writeFileSync(pw, `${PASSPHRASE}\n`, { mode: 0o600 });
    const socket = join(dir, 'nbd.sock');
    const start = async (): Promise<{ kill: (sig: NodeJS.Signals) => Promise<void>; exited: () => boolean }> => {
      const server = vmsealChild(
        ['serve', '--vm', dir, '--socket', socket, '--passphrase-file', pw],
        cleanEnv({ VMSEAL_HOME: join(dir, 'home'), XDG_RUNTIME_DIR: undefined }),
      );
      const closed = new Promise<void>((done) => server.on('close', () => done()));
      let err = '';
      await new Promise<void>((ready, fail) => {
        server.stderr.on('data', (d) => {
          err += String(d);
          if (/^vmseal: serving vm1-vars on /m.test(err)) ready();
        });
        void closed.then(() => fail(new Error(`serve exited: ${err}`)));
      });
      return {
        exited: () => server.exitCode !== null || server.signalCode !== null,
        async kill(sig) {
          if (server.exitCode === null && server.signalCode === null) server.kill(sig);
          await closed;
        },
      };
    };
    const server = await start();
    // 200 writes of the whole store, write k filled with byte k (1..200): a torn file would mix bytes.
    // FUA writes (-f): the export is write-back, a write is durable once flushed (state-file-image.ts).
    const args = ['-f', 'raw'];
    for (let k = 1; k <= 200; k++) args.push('-c', `write -f -P ${k} 0 ${VARS_BYTES}`);
    const client = spawn('stdbuf', ['-oL', 'qemu-io', ...args, unixUri(socket, 'vm1-vars')], { stdio: ['ignore', 'pipe', 'pipe'] });
    const clientExit = new Promise<void>((done) => client.on('close', () => done()));
    let acked = 0;
    await new Promise<void>((killed) => {
      let out = '';
      client.stdout.on('data', (d) => {
        out += String(d);
        acked = (out.match(/^wrote /gm) ?? []).length;
        if (acked >= 20 && !server.exited()) void server.kill('SIGKILL').then(killed);
      });
      void clientExit.then(() => killed());
    });
    await server.kill('SIGKILL');
    await clientExit;
    expect(acked).toBeGreaterThanOrEqual(20);
    expect(acked).toBeLessThan(200);

    const got = await decrypted(vars);
    expect(got.length).toBe(VARS_BYTES);
    const k = got[0]!;
    // Every acknowledged FUA write is durable; the one in flight may or may not be there.
    expect(k === acked || k === acked + 1).toBe(true);
    expect(got.equals(Buffer.alloc(VARS_BYTES, k))).toBe(true);

    // A temp file left by the killed rewrite (if any) holds no plaintext and is gone after a restart.
    for (const t of tempFilesOf(dir)) expect(readFileSync(join(dir, t)).includes(Buffer.alloc(64, k))).toBe(false);
    const again = await start();
    try {
      expect(tempFilesOf(dir)).toEqual([]);
      expect(existsSync(vars)).toBe(true);
    } finally {
      await again.kill('SIGTERM');
    }
    expect((await decrypted(vars)).equals(got)).toBe(true);
  });
});
