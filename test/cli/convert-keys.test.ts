// `vmseal convert` of an encrypted disk that keeps its encryption asks for keys only when the job
// will use them (convertNeedsKeys, the job's own rule): a ciphertext copy (flat → flat, sparse →
// sparse) runs with no keystore, no passphrase and the KMS down, and its output opens with the
// disk's keys afterwards; sparse → flat and flat → sparse (to leave the zero units out) use the keys
// and fail without them.
// Run as a user would: the built CLI in a child process, a real PyKMIP server stopped and started.
import { existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { cleanEnv, expectOneLineError, json, vmseal, type CliResult } from './run-cli.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;

let dir: string;
let kms: PyKmip | undefined;
let source: Buffer;
let pwFile: string;
/** The keystore the disks were made with, and the KMS. */
let keysEnv: NodeJS.ProcessEnv;
/** An empty keystore folder, no passphrase, and the KMS address (refusing connections while the server is stopped). */
let noKeysEnv: NodeJS.ProcessEnv;
/** Encrypted copies of `source`: under a KEK of the KMS, and under the local keystore plus a recovery passphrase. */
const disks: Record<'kmsFlat' | 'kmsSparse' | 'localFlat' | 'localSparse', string> = { kmsFlat: '', kmsSparse: '', localFlat: '', localSparse: '' };

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** The plaintext of an encrypted disk, decrypted by the CLI with `env`'s keys (and `extra` options). */
async function plaintext(disk: string, env: NodeJS.ProcessEnv, extra: string[] = []): Promise<Buffer> {
  const out = `${disk}.plain.img`;
  ok(await vmseal(['decrypt', disk, out, '--raw', ...extra], env));
  try {
    return await readFile(out);
  } finally {
    await rm(out, { force: true });
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-convert-keys-'));
  // Data with zeros between: flat → sparse with the keys leaves the zero units out.
  source = Buffer.alloc(SIZE);
  for (const [at, len] of [
    [0, 200 * 1024],
    [3 * MiB + 4096, MiB],
    [SIZE - 64 * 1024, 64 * 1024],
  ] as const)
    for (let i = 0; i < len; i++) source[at + i] = (i * 13 + at) & 0xff || 1;
  const raw = join(dir, 'src.img');
  await writeFile(raw, source);
  pwFile = join(dir, 'pw.txt');
  await writeFile(pwFile, 'correct horse battery staple\n', { mode: 0o600 });
  kms = await startPyKmip({ nodes: 1, dir: join(dir, 'kms') });
  const kmsVars = {
    VMSEAL_KMS: kms.endpoints.map((e) => `${e.host}:${e.port}`).join(','),
    VMSEAL_KMS_CA: kms.caPath,
    VMSEAL_KMS_CERT: kms.clientCertPath,
    VMSEAL_KMS_KEY: kms.clientKeyPath,
  };
  keysEnv = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), ...kmsVars });
  await mkdir(join(dir, 'empty-home'), { mode: 0o700 });
  noKeysEnv = cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home'), ...kmsVars });
  for (const [name, subformat] of [
    ['Flat', 'monolithicFlat'],
    ['Sparse', 'monolithicSparse'],
  ] as const) {
    disks[`kms${name}`] = join(dir, `kms-${subformat}.vmdk`);
    ok(await vmseal(['encrypt', raw, disks[`kms${name}`], '--subformat', subformat, '--key-provider', 'kmip'], keysEnv));
    disks[`local${name}`] = join(dir, `local-${subformat}.vmdk`);
    const phrase = ['--recovery-passphrase', '--passphrase-file', pwFile, '--pbkdf2-rounds', '1000'];
    ok(await vmseal(['encrypt', raw, disks[`local${name}`], '--subformat', subformat, '--key-provider', 'local', ...phrase], keysEnv));
  }
  // From here on the KMS address refuses connections, until a test starts the server again.
  await kms.stopNode(0);
}, 60_000);

afterAll(async () => {
  await kms?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('convert of an encrypted disk keeping its encryption, without keys', () => {
  it.each([
    ['kmsFlat', 'monolithicFlat'],
    ['kmsSparse', 'monolithicSparse'],
    ['localFlat', 'monolithicFlat'],
    ['localSparse', 'twoGbMaxExtentSparse'],
  ] as const)('%s → %s copies the ciphertext with the KMS down, no keystore and no passphrase', async (input, subformat) => {
    const out = join(dir, `out-${input}-${subformat}.vmdk`);
    const r = ok(await vmseal(['convert', disks[input], out, '--subformat', subformat, '--json'], noKeysEnv));
    const result = json(r);
    expect(result).toMatchObject({ ok: true, encrypted: true, subformat });
    expect(result.notes ?? []).not.toContainEqual(expect.stringContaining('every data unit is an allocated grain'));
    // Nothing asked for a passphrase, nothing reached for a key.
    expect(r.stderr.replace(/^Note: .*$/gm, '')).not.toMatch(/passphrase|KMS|key/i);
    // The output opens with the input's keys: the local keystore, or its recovery passphrase alone.
    if (input.startsWith('local')) {
      expect((await plaintext(out, keysEnv)).equals(source)).toBe(true);
      const passphraseOnly = cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home') });
      expect((await plaintext(out, passphraseOnly, ['--passphrase-file', pwFile])).equals(source)).toBe(true);
    }
  });

  it('asks for no passphrase it will not use: --recovery-passphrase with none at hand (no terminal, file or variable)', async () => {
    const out = join(dir, 'out-no-prompt.vmdk');
    const r = ok(await vmseal(['convert', disks.localFlat, out, '--subformat', 'monolithicFlat', '--recovery-passphrase', '--json'], noKeysEnv));
    expect(json(r)).toMatchObject({ ok: true, encrypted: true, subformat: 'monolithicFlat' });
    expect((await plaintext(out, keysEnv)).equals(source)).toBe(true);
  });

  it('the KMS-locked outputs open with the KMS once it is up again', async () => {
    await kms!.startNode(0);
    try {
      for (const name of ['out-kmsFlat-monolithicFlat.vmdk', 'out-kmsSparse-monolithicSparse.vmdk'])
        expect((await plaintext(join(dir, name), keysEnv)).equals(source), name).toBe(true);
    } finally {
      await kms!.stopNode(0);
    }
  });

  it.each(['kmsSparse', 'localSparse'] as const)(
    '%s → monolithicFlat still needs the keys: refused without them with a typed error, nothing written',
    async (input) => {
      const out = join(dir, `refused-${input}.vmdk`);
      const r = await vmseal(['convert', disks[input], out, '--subformat', 'monolithicFlat'], noKeysEnv);
      expect(r.code, r.stderr).toBe(3);
      // ERR_DISK_LOCKED (exit 3): the provider the disk names cannot give its key, and no passphrase was given.
      expect(expectOneLineError(r)).toContain('the disk is locked');
      expect(existsSync(out)).toBe(false);
    },
  );

  it('flat → monolithicSparse uses the keys, to leave the zero units out: compact with them, refused without', async () => {
    const out = join(dir, 'flat-to-sparse-with-keys.vmdk');
    const result = json(ok(await vmseal(['convert', disks.localFlat, out, '--subformat', 'monolithicSparse', '--json'], keysEnv)));
    expect(result).toMatchObject({ ok: true, encrypted: true, subformat: 'monolithicSparse' });
    expect(result.notes ?? []).not.toContainEqual(expect.stringContaining('every data unit is an allocated grain'));
    // About 1.3 MiB of the 8 MiB hold data: a ciphertext copy would have allocated all of it.
    expect(statSync(out).size).toBeLessThan(SIZE / 2);
    expect((await plaintext(out, keysEnv)).equals(source)).toBe(true);
    const refused = join(dir, 'flat-to-sparse-no-keys.vmdk');
    const r = await vmseal(['convert', disks.kmsFlat, refused, '--subformat', 'monolithicSparse'], noKeysEnv);
    expect(r.code, r.stderr).toBe(3);
    expect(existsSync(refused)).toBe(false);
  });
});
