// A deep rekey rotates every locker: new key-encryption keys from each provider, the recovery
// passphrase given anew or kept on purpose, and the old KEKs made for this disk alone retired, so
// that an old copy of the descriptor no longer opens. Run as a user would (the built CLI), with the
// local keystore and a real PyKMIP server.
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { KmipKeyProvider } from '../../src/kmip/index.js';
import { cleanEnv, expectOneLineError, json, qemuImg, vmseal, vmsealChild, type CliResult } from './run-cli.js';

const MiB = 1024 * 1024;
let dir: string;
let plain: string;
let oldPw: string;
let newPw: string;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A monolithicFlat disk: its descriptor is a small text file that can be saved and put back. */
async function encrypted(name: string, env: NodeJS.ProcessEnv, extra: string[] = []): Promise<{ disk: string; saved: string; first: Record<string, any> }> {
  const work = join(dir, name);
  await mkdir(work);
  const disk = join(work, 'enc.vmdk');
  const first = json(ok(await vmseal(['encrypt', plain, disk, '--subformat', 'monolithicFlat', '--json', ...extra], env)));
  const saved = join(work, 'old-descriptor.vmdk');
  await copyFile(disk, saved);
  return { disk, saved, first };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-keyrot-'));
  plain = join(dir, 'plain.img');
  await qemuImg(['create', '-f', 'raw', plain, '4M']);
  await writeFile(plain, Buffer.alloc(MiB, 0x5a), { flag: 'r+' });
  oldPw = join(dir, 'old-pw.txt');
  newPw = join(dir, 'new-pw.txt');
  await writeFile(oldPw, 'old recovery passphrase\n', { mode: 0o600 });
  await writeFile(newPw, 'new recovery passphrase\n', { mode: 0o600 });
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('deep rekey with the local key provider', () => {
  it('retires the old KEK made for the disk: the old descriptor copied back no longer opens', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home-local') });
    const { disk, saved, first } = await encrypted('local', env);
    const oldKey = first.lockers[0].keyId;

    const r = json(ok(await vmseal(['rekey', disk, '--deep', '--json'], env)));
    expect(r.lockers).toHaveLength(1);
    expect(r.lockers[0].providerId).toBe('local');
    expect(r.lockers[0].keyId).not.toBe(oldKey);
    expect(r.keyRotation.retired).toEqual([{ providerId: 'local', keyId: oldKey }]);
    const listed = json(ok(await vmseal(['keys', 'list', '--json'], env)));
    const states = Object.fromEntries(listed.keys.map((k: { keyId: string; state: string }) => [k.keyId, k.state]));
    expect(states[oldKey]).toBe('retired');
    expect(states[r.lockers[0].keyId]).toBe('active');
    ok(await vmseal(['verify', disk], env));

    // Roll the descriptor back: its KEK is retired, so it is refused before any data is read.
    await copyFile(saved, disk);
    const refused = await vmseal(['verify', disk], env);
    expect(refused.code).toBe(3);
    const line = expectOneLineError(refused);
    expect(line).toContain('retired');
    expect(line).toContain('--allow-retired-key');
    // Allowing retired keys gets past the key check (as for an old backup of the whole disk); here the
    // data check then finds the descriptor does not belong to the re-encrypted data.
    const info = json(ok(await vmseal(['info', disk, '--json', '--allow-retired-key'], env)));
    expect(info.encryption.unlockable).toBe(false);
    expect(info.encryption.unlockError.code).toBe('ERR_WRONG_DATA');
  });

  it('keeps a shared KEK (--key-id) active and says so', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home-shared') });
    const made = json(ok(await vmseal(['keys', 'create', '--name', 'batch', '--json'], env)));
    const shared = made.keyId;
    const { disk } = await encrypted('shared', env, ['--key-id', shared]);
    const r = await vmseal(['rekey', disk, '--deep', '--json'], env);
    const out = json(ok(r));
    expect(out.lockers[0].keyId).not.toBe(shared);
    expect(out.keyRotation.retired).toEqual([]);
    expect(out.keyRotation.kept).toMatchObject([{ keyId: shared, reason: 'shared' }]);
    expect(r.stderr).toMatch(new RegExp(`note: old key ${shared} of provider local stays active: a shared key`));
    const listed = json(ok(await vmseal(['keys', 'list', '--json'], env)));
    expect(listed.keys.find((k: { keyId: string }) => k.keyId === shared).state).toBe('active');
  });

  it('--destroy-old-keys destroys the old KEK instead', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home-destroy') });
    const { disk, first } = await encrypted('destroy', env);
    const out = json(ok(await vmseal(['rekey', disk, '--deep', '--destroy-old-keys', '--json'], env)));
    expect(out.keyRotation.destroyed).toEqual([{ providerId: 'local', keyId: first.lockers[0].keyId }]);
    const listed = json(ok(await vmseal(['keys', 'list', '--json'], env)));
    expect(listed.keys.find((k: { keyId: string }) => k.keyId === first.lockers[0].keyId).state).toBe('destroyed');
  });
});

describe('deep rekey of a disk with a recovery passphrase', () => {
  it('is refused until the new passphrase is given or keeping the old one is asked for', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home-phrase') });
    const { disk } = await encrypted('phrase', env, ['--recovery-passphrase', '--passphrase-file', oldPw, '--pbkdf2-rounds', '1000']);
    const refused = await vmseal(['rekey', disk, '--deep'], env);
    expect(refused.code).toBe(2);
    const line = expectOneLineError(refused);
    expect(line).toContain('--new-passphrase-file');
    expect(line).toContain('--keep-recovery-passphrase');

    // A new passphrase: the old one no longer opens the disk, the new one does.
    ok(await vmseal(['rekey', disk, '--deep', '--new-passphrase-file', newPw, '--pbkdf2-rounds', '1000'], env));
    const noHome = cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home') });
    expect((await vmseal(['verify', disk, '--passphrase-file', oldPw], noHome)).code).toBe(3);
    ok(await vmseal(['verify', disk, '--passphrase-file', newPw], noHome));

    // Kept on purpose: it still opens, with a warning.
    const kept = ok(await vmseal(['rekey', disk, '--deep', '--passphrase-file', newPw, '--keep-recovery-passphrase', '--pbkdf2-rounds', '1000'], env));
    expect(kept.stderr).toMatch(/^warning: the recovery passphrase is kept/m);
    ok(await vmseal(['verify', disk, '--passphrase-file', newPw], noHome));

    // Keeping needs the passphrase itself.
    const noPass = await vmseal(['rekey', disk, '--deep', '--keep-recovery-passphrase'], env);
    expect(noPass.code).toBe(2);
    expect(expectOneLineError(noPass)).toContain('--passphrase-file');
    // The new passphrase must be new.
    const same = await vmseal(['rekey', disk, '--deep', '--passphrase-file', newPw, '--new-passphrase-file', newPw], env);
    expect(same.code).toBe(2);
    expect(await readFile(disk, 'utf8')).toContain('encryption.keySafe');
  });
});

describe('deep rekey with the KMIP key provider (a real PyKMIP server)', () => {
  let kms: PyKmip;
  let kenv: NodeJS.ProcessEnv;
  let provider: KmipKeyProvider;
  beforeAll(async () => {
    kms = await startPyKmip({ nodes: 1 });
    kenv = cleanEnv({
      VMSEAL_HOME: join(dir, 'home-kmip'),
      VMSEAL_KMS: kms.endpoints.map((e) => `${e.host}:${e.port}`).join(','),
      VMSEAL_KMS_CA: kms.caPath,
      VMSEAL_KMS_CERT: kms.clientCertPath,
      VMSEAL_KMS_KEY: kms.clientKeyPath,
    });
    provider = new KmipKeyProvider({ ...kms.providerOptions('kmip'), timeoutMs: 5000 });
  });
  afterAll(async () => {
    await provider?.close();
    await kms?.stop();
  });

  it('revokes the old KEK (Get still returns it, vmseal refuses it) and creates the new one on the KMS', async () => {
    const { disk, saved, first } = await encrypted('kmip', kenv);
    const oldKey = first.lockers[0].keyId;
    const r = json(ok(await vmseal(['rekey', disk, '--deep', '--json'], kenv)));
    expect(r.lockers[0]).toMatchObject({ kind: 'provider', providerId: 'kmip' });
    expect(r.lockers[0].keyId).not.toBe(oldKey);
    expect(r.keyRotation.retired).toEqual([{ providerId: 'kmip', keyId: oldKey }]);
    expect(await provider.getState(oldKey)).toBe('Deactivated');
    expect(await provider.keyOwner(r.lockers[0].keyId)).toBe(r.diskId);

    await copyFile(saved, disk);
    const refused = await vmseal(['verify', disk], kenv);
    expect(refused.code).toBe(3);
    expect(expectOneLineError(refused)).toContain('Deactivated');
    const info = json(ok(await vmseal(['info', disk, '--json', '--allow-retired-key'], kenv)));
    expect(info.encryption.unlockError.code).toBe('ERR_WRONG_DATA'); // past the key check, stopped by the data check
  });

  it('--destroy-old-keys: Revoke then Destroy', async () => {
    const { disk, first } = await encrypted('kmip-destroy', kenv);
    const oldKey = first.lockers[0].keyId;
    const r = json(ok(await vmseal(['rekey', disk, '--deep', '--in-place', '--destroy-old-keys', '--json'], kenv)));
    expect(r.keyRotation.destroyed).toEqual([{ providerId: 'kmip', keyId: oldKey }]);
    await expect(provider.getState(oldKey)).rejects.toMatchObject({ resultReason: 'ItemNotFound' });
  });
});

describe('an interrupted encrypt', () => {
  it('Ctrl-C after the new key was made: exit 130, and the keystore holds no new key', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home-sigint') });
    const big = join(dir, 'big.img');
    await qemuImg(['create', '-f', 'raw', big, '256M']);
    await writeFile(big, Buffer.alloc(MiB, 0x33), { flag: 'r+' });
    const outDir = join(dir, 'sigint');
    await mkdir(outDir);
    const child = vmsealChild(['encrypt', big, join(outDir, 'big.vmdk'), '--subformat', 'monolithicFlat', '--chunk-size', '4K', '--threads', '1'], env);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    // The disk's files are created in the staging folder after its key: wait for them, then interrupt.
    const started = async (): Promise<boolean> => {
      for (const stage of await readdir(outDir)) {
        const files = await readdir(join(outDir, stage)).catch(() => [] as string[]);
        if (files.some((f) => f.startsWith('big'))) return true;
      }
      return false;
    };
    for (let i = 0; i < 1000 && !(await started()); i++) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(stderr).toContain('nothing was left behind');
    expect(await readdir(outDir)).toEqual([]);
    const listed = json(ok(await vmseal(['keys', 'list', '--json'], env)));
    expect(listed.keys).toEqual([]);
    await rm(big);
  });
});
