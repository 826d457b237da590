// `--pbkdf2-rounds N`: the PBKDF2 rounds of new passphrase lockers, asked for explicitly (tests and
// throwaway disks; there is no environment variable for it). The rounds land in the locker, a warning
// says when they are below the default, fewer than the floor are refused, and without the option the
// default (600,000) is kept; where a command would make no passphrase locker it is a usage error. Run
// as a user would: the built CLI in a child process.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KDF_LIMITS, PHRASE_DEFAULTS } from '../../src/keys/index.js';
import { patternBytes } from '../disk/helpers.js';
import { cleanEnv, expectOneLineError, json, vmseal, type CliResult } from './run-cli.js';

const MiB = 1024 * 1024;
const WARNING = /warning: --pbkdf2-rounds \d+ is below the default 600000/g;

let dir: string;
let env: NodeJS.ProcessEnv;
let pwFile: string;
let newPwFile: string;
let raw: string;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** The KDF of the one passphrase locker of `disk`, as `vmseal info --json` describes it. */
async function phraseKdf(disk: string): Promise<unknown> {
  const lockers = json(ok(await vmseal(['info', disk, '--json'], env))).encryption.lockers as Array<{ kind: string; kdf?: unknown }>;
  const phrases = lockers.filter((l) => l.kind === 'passphrase');
  expect(phrases).toHaveLength(1);
  return phrases[0]!.kdf;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-rounds-'));
  env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
  pwFile = join(dir, 'pw.txt');
  newPwFile = join(dir, 'new-pw.txt');
  await writeFile(pwFile, 'correct horse battery staple\n', { mode: 0o600 });
  await writeFile(newPwFile, 'another horse battery staple\n', { mode: 0o600 });
  raw = join(dir, 'disk.img');
  const image = Buffer.alloc(MiB);
  patternBytes(200_000, 3).copy(image, 4096);
  await writeFile(raw, image);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The KDF of the one passphrase locker in `lockers` (the `lockers` of a --json result). */
function onlyPhraseKdf(lockers: Array<{ kind: string; kdf?: unknown }>): unknown {
  const phrases = lockers.filter((l) => l.kind === 'passphrase');
  expect(phrases).toHaveLength(1);
  return phrases[0]!.kdf;
}

describe('--pbkdf2-rounds', () => {
  it('puts the rounds in the new locker, warns below the default; the passphrase alone opens the disk; a deep rekey takes them too', async () => {
    const enc = join(dir, 'fast.vmdk');
    const r = ok(await vmseal(['encrypt', raw, enc, '--recovery-passphrase', '--passphrase-file', pwFile, '--pbkdf2-rounds', '1000', '--json'], env));
    expect(r.stderr.match(WARNING)).toHaveLength(1);
    expect(onlyPhraseKdf(json(r).lockers)).toEqual({ name: 'PBKDF2-HMAC-SHA-256', rounds: 1000 });
    // Without the keystore: only the passphrase locker (1,000 rounds) can open it.
    const noKeys = cleanEnv({ VMSEAL_HOME: join(dir, 'empty-home') });
    expect(json(ok(await vmseal(['verify', enc, '--json', '--passphrase-file', pwFile], noKeys))).ok).toBe(true);
    // The new passphrase of a deep rekey (rekey.ts makes that locker itself).
    ok(await vmseal(['rekey', enc, '--deep', '--in-place', '--passphrase-file', pwFile, '--new-passphrase-file', newPwFile, '--pbkdf2-rounds', '3000'], env));
    expect(await phraseKdf(enc)).toEqual({ name: 'PBKDF2-HMAC-SHA-256', rounds: 3000 });
  });

  it('keeps the default rounds without the option, with no warning', async () => {
    const r = ok(await vmseal(['encrypt', raw, join(dir, 'default.vmdk'), '--recovery-passphrase', '--passphrase-file', pwFile, '--json'], env));
    expect(r.stderr).not.toMatch(WARNING);
    expect(onlyPhraseKdf(json(r).lockers)).toEqual({ name: 'PBKDF2-HMAC-SHA-256', rounds: PHRASE_DEFAULTS.pbkdf2Sha256Rounds });
  });

  it('refuses fewer rounds than the floor (and more than the limit) as a usage error, writing nothing', async () => {
    for (const n of [String(KDF_LIMITS.minChosenPbkdf2Rounds - 1), String(KDF_LIMITS.maxPbkdf2Rounds + 1)]) {
      const out = join(dir, `refused-${n}.vmdk`);
      const r = await vmseal(['encrypt', raw, out, '--recovery-passphrase', '--passphrase-file', pwFile, '--pbkdf2-rounds', n], env);
      expect(r.code, r.stderr).toBe(2);
      expect(expectOneLineError(r)).toContain(`--pbkdf2-rounds "${n}" is not a whole number from 1000 to 10000000`);
      expect(existsSync(out)).toBe(false);
    }
  });

  it('without an option that makes a passphrase locker (encrypt, convert, rekey, vm encrypt) is a usage error, writing nothing', async () => {
    const runs: Array<[string, string[]]> = [
      ['encrypt', ['encrypt', raw, join(dir, 'no-locker.vmdk')]],
      ['convert --encrypt', ['convert', raw, join(dir, 'no-locker-convert.vmdk'), '--encrypt', '--subformat', 'monolithicSparse']],
    ];
    for (const [what, args] of runs) {
      const r = await vmseal([...args, '--pbkdf2-rounds', '2000'], env);
      expect(r.code, `${what}: ${r.stderr}`).toBe(2);
      expect(expectOneLineError(r)).toContain(
        '--pbkdf2-rounds sets the rounds of a new recovery passphrase locker, and without --recovery-passphrase none is made',
      );
      expect(r.stderr).toContain('Add --recovery-passphrase');
      expect(existsSync(args[2]!)).toBe(false);
    }
    // rekey: a shallow one makes a passphrase locker only with --add-recovery-passphrase, a deep one also with a new or kept passphrase.
    const disk = join(dir, 'rekey-no-locker.vmdk');
    ok(await vmseal(['encrypt', raw, disk], env));
    const before = await readFile(disk);
    for (const [mode, options] of [
      ['--shallow', /without --add-recovery-passphrase none is made/],
      ['--deep', /without --new-passphrase-file, --new-passphrase-env, --keep-recovery-passphrase or --add-recovery-passphrase none is made/],
    ] as const) {
      const r = await vmseal(['rekey', disk, mode, '--pbkdf2-rounds', '2000'], env);
      expect(r.code, `rekey ${mode}: ${r.stderr}`).toBe(2);
      expect(expectOneLineError(r)).toMatch(options);
    }
    expect((await readFile(disk)).equals(before)).toBe(true);
    // vm encrypt: a passphrase locker only with --recovery-passphrase or --workstation.
    const vm = join(dir, 'vm-no-locker');
    await mkdir(vm);
    const vmx = join(vm, 'test.vmx');
    const config = '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "18"\ndisplayName = "Test VM"\n';
    await writeFile(vmx, config);
    const v = await vmseal(['vm', 'encrypt', vm, '--config-only', '--pbkdf2-rounds', '2000'], env);
    expect(v.code, v.stderr).toBe(2);
    expect(expectOneLineError(v)).toContain('without --recovery-passphrase or --workstation none is made');
    expect(await readFile(vmx, 'utf8')).toBe(config);
  });

  it('vm rekey (which makes no locker with chosen rounds) and vm tpm (a locker only at the first start, with --recovery-passphrase) refuse it as a usage error, writing nothing', async () => {
    const vm = join(dir, 'vm-rounds');
    await mkdir(vm);
    const vmx = join(vm, 'test.vmx');
    const config = '.encoding = "UTF-8"\nconfig.version = "8"\nvirtualHW.version = "18"\ndisplayName = "Rounds VM"\n';
    await writeFile(vmx, config);
    // vm rekey: a shallow rekey keeps the passphrase lockers, a deep one re-makes a kept passphrase at the default rounds.
    for (const mode of [['--shallow'], ['--deep', '--keep-recovery-passphrase', '--passphrase-file', pwFile], ['--deep', '--remove-recovery-passphrase']]) {
      const r = await vmseal(['vm', 'rekey', vm, ...mode, '--pbkdf2-rounds', '2000'], env);
      expect(r.code, `vm rekey ${mode.join(' ')}: ${r.stderr}`).toBe(2);
      expect(expectOneLineError(r)).toContain(
        '--pbkdf2-rounds sets the rounds of a new recovery passphrase locker, and vm rekey makes none with chosen rounds',
      );
      expect(r.stderr).toContain('Drop --pbkdf2-rounds');
    }
    expect(await readFile(vmx, 'utf8')).toBe(config);
    // vm tpm without --recovery-passphrase: refused before the manifest is even read.
    const t = await vmseal(['vm', 'tpm', vm, '--pbkdf2-rounds', '2000'], env);
    expect(t.code, t.stderr).toBe(2);
    expect(expectOneLineError(t)).toContain('without --recovery-passphrase none is made');
    // vm tpm with --recovery-passphrase once the state key exists: the passphrase unlocks it, no locker is made.
    const manifest = JSON.stringify({ format: 'vmseal-vm', version: 1, tpm: { state: 'tpm', keySafe: 'vmware:key/made-at-the-first-start' } });
    await writeFile(join(vm, 'vmseal-vm.json'), manifest);
    const later = await vmseal(['vm', 'tpm', vm, '--recovery-passphrase', '--passphrase-file', pwFile, '--pbkdf2-rounds', '2000'], env);
    expect(later.code, later.stderr).toBe(2);
    expect(expectOneLineError(later)).toContain(`the vTPM state key of ${vm} exists already`);
    expect(later.stderr).toContain('Drop --pbkdf2-rounds');
    expect(await readFile(join(vm, 'vmseal-vm.json'), 'utf8')).toBe(manifest);
    expect(existsSync(join(vm, 'tpm'))).toBe(false);
  });

  it('reaches every image of a batch converted by worker threads, with one warning', async () => {
    const inDir = join(dir, 'batch-in');
    await mkdir(inDir);
    // More images than jobs: the batch runs worker threads (convert.ts), whose lockers cross the key bridge.
    for (const name of ['a.img', 'b.img', 'c.img', 'd.img']) await writeFile(join(inDir, name), patternBytes(MiB, name.charCodeAt(0)));
    const outDir = join(dir, 'batch-out');
    const opts = ['--encrypt', '--subformat', 'monolithicSparse', '--jobs', '3', '--recovery-passphrase', '--passphrase-file', pwFile];
    const r = ok(await vmseal(['convert', inDir, outDir, ...opts, '--pbkdf2-rounds', '2000', '--json'], env));
    expect(json(r)).toMatchObject({ ok: true, converted: 4, workers: 1 });
    expect(r.stderr.match(WARNING)).toHaveLength(1);
    for (const name of ['a.vmdk', 'b.vmdk', 'c.vmdk', 'd.vmdk'])
      expect(await phraseKdf(join(outDir, name))).toEqual({ name: 'PBKDF2-HMAC-SHA-256', rounds: 2000 });
  });
});
