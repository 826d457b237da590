// The data check from the command line: a descriptor rolled back after a deep rekey is refused with
// exit code 6 (it used to decrypt garbage with exit 0), and `vmseal repair --reseal-data-check`
// is the way out of a torn unit-0 write.
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock } from '../../src/pipeline/lock.js';
import { cleanEnv, expectOneLineError, json, vmseal, type CliResult } from './run-cli.js';

let dir: string;
let env: NodeJS.ProcessEnv;
let keyId: string;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** A flat encrypted disk whose first sector holds `fill`, under the shared key (a shared KEK stays active through a deep rekey). */
async function encryptedDisk(name: string, fill: number): Promise<string> {
  const raw = join(dir, `${name}.img`);
  await writeFile(raw, Buffer.alloc(1 << 20, fill));
  const enc = join(dir, `${name}.vmdk`);
  ok(await vmseal(['encrypt', raw, enc, '--subformat', 'monolithicFlat', '--key-id', keyId], env));
  return enc;
}

beforeAll(async () => {
  if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
    throw new Error('dist/cli/main.js is missing: these tests run the built CLI; run `npm run build` first');
  }
  dir = await mkdtemp(join(tmpdir(), 'vmseal-cli-repair-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
  keyId = json(ok(await vmseal(['keys', 'create', '--json'], env))).keyId;
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('the data check on the command line', () => {
  it('the old descriptor copied back after a deep rekey: verify and decrypt exit 6 (ERR_WRONG_DATA)', async () => {
    const enc = await encryptedDisk('rollback', 0x5a);
    const old = await readFile(enc);
    ok(await vmseal(['rekey', enc, '--deep'], env));
    await writeFile(enc, old);
    const v = await vmseal(['verify', enc], env);
    expect(v.code).toBe(6);
    expect(expectOneLineError(v)).toContain('does not belong to the data');
    const info = json(ok(await vmseal(['info', enc, '--json'], env)));
    expect(info.encryption).toMatchObject({ unlockable: false, unlockError: { code: 'ERR_WRONG_DATA' } });
    const d = await vmseal(['decrypt', enc, join(dir, 'rollback-out.img'), '--raw', '--json'], env);
    expect(d.code).toBe(6);
    expect(existsSync(join(dir, 'rollback-out.img'))).toBe(false);
  });

  it('a torn data check is refused; repair --reseal-data-check fixes it; repair needs the keys and says what to repair', async () => {
    const enc = await encryptedDisk('torn', 0x33);
    const text = await readFile(enc, 'utf8');
    await writeFile(enc, text.replace(/encryption\.dataCheck = "[^"]*"/, `encryption.dataCheck = "${'0'.repeat(64)}.${'-'.repeat(64)}"`));
    expect((await vmseal(['verify', enc], env)).code).toBe(6);

    const noWhat = await vmseal(['repair', enc], env);
    expect(noWhat.code).toBe(2);
    expect(noWhat.stderr).toContain('--reseal-data-check');
    const noKeys = await vmseal(['repair', '--reseal-data-check', enc], cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home') }));
    expect(noKeys.code).not.toBe(0);
    expect(await readFile(enc, 'utf8')).not.toBe(text);

    // Not while another process holds the disk (exit 7, like any job).
    const held = await acquireLock(await realpath(enc), 'test');
    try {
      expect((await vmseal(['repair', '--reseal-data-check', enc], env)).code).toBe(7);
    } finally {
      await held.release();
    }

    const r = json(ok(await vmseal(['repair', '--reseal-data-check', enc, '--json'], env)));
    expect(r).toMatchObject({ ok: true, command: 'repair', previousFormatVersion: 2 });
    expect(await readFile(enc, 'utf8')).toBe(text);
    const v = json(ok(await vmseal(['verify', enc, '--json'], env)));
    expect(v.ok).toBe(true);
  });
});
