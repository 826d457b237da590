// End-to-end tests of the `vmseal` command, run as a user would: `node bin/vmseal.js …` in a child
// process (against the built dist/, or VMSEAL_CLI_ENTRY in development), on images made by
// qemu-img, with a temporary VMSEAL_HOME, the local key provider and a real PyKMIP server.
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSampleDisk } from '../../src/cli/sample-disk.js';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import {
  cleanEnv,
  expectOneLineError,
  json,
  qemuContentHash,
  qemuImg,
  qemuVirtualSize,
  sha256File,
  vmseal,
  vmsealChild,
  vmsealOnTty,
  type CliResult,
} from './run-cli.js';

const MiB = 1024 * 1024;
// Small: what these tests prove is the CLI's behaviour, not throughput (8 MiB is the sample disk's
// MBR, 1 MiB gap and a partition of text and binary files with holes).
const SIZE = 8 * MiB;
const PASSPHRASE = 'correct horse battery staple';
// New passphrase lockers at 1,000 PBKDF2 rounds, not 600,000: each costs a fraction of a second to
// make and again to open (test/cli/pbkdf2-rounds.test.ts checks the option and the default).
const FAST_KDF = ['--pbkdf2-rounds', '1000'];

let dir: string;
let home: string;
let env: NodeJS.ProcessEnv;
let expected: string; // sha256 of the virtual disk content of every source image
const sources: Record<string, string> = {};
let pwFile: string;

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`vmseal exited ${r.code} (${r.signal ?? ''})\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** The SHA-256 of an encrypted disk's plaintext raw image as vmseal's verify --sha256 reads it. */
async function encryptedHash(disk: string, e: NodeJS.ProcessEnv = env, extra: string[] = []): Promise<string> {
  const v = json(ok(await vmseal(['verify', disk, '--json', '--sha256', ...extra], e)));
  expect(v.ok).toBe(true);
  expect(v.encrypted).toBe(true);
  return v.sha256;
}

beforeAll(async () => {
  if (!process.env.VMSEAL_CLI_ENTRY && !existsSync(fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url)))) {
    throw new Error('dist/cli/main.js is missing: these tests run the built CLI; run `npm run build` first');
  }
  const version = await vmseal(['--version'], cleanEnv());
  if (version.code !== 0 || !/^\d+\.\d+\.\d+/.test(version.stdout)) {
    throw new Error(
      `bin/vmseal.js does not run the current CLI (--version printed ${JSON.stringify(version.stdout + version.stderr)}): run \`npm run build\` first`,
    );
  }
  dir = await mkdtemp(join(tmpdir(), 'vmseal-cli-e2e-'));
  home = join(dir, 'home');
  env = cleanEnv({ VMSEAL_HOME: home });
  pwFile = join(dir, 'pw.txt');
  await writeFile(pwFile, `${PASSPHRASE}\n`, { mode: 0o600 });
  const src = join(dir, 'src');
  await mkdir(src);
  sources.raw = join(src, 'disk.img');
  await writeSampleDisk(sources.raw, SIZE, 7);
  expected = await sha256File(sources.raw);
  sources.monolithicSparse = join(src, 'sparse.vmdk');
  sources.monolithicFlat = join(src, 'flat.vmdk');
  await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', sources.raw, sources.monolithicSparse]);
  await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', sources.raw, sources.monolithicFlat]);
  expect(await qemuContentHash(sources.monolithicSparse, join(dir, 'check.raw'))).toBe(expected);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.each(['raw', 'monolithicSparse', 'monolithicFlat'])('local key provider, %s image made by qemu-img', (kind) => {
  it('encrypt → info → verify → shallow rekey → deep rekey → decrypt keeps the data', async () => {
    const work = join(dir, `local-${kind}`);
    await mkdir(work);
    const enc = join(work, 'enc.vmdk');

    const e = json(ok(await vmseal(['encrypt', sources[kind]!, enc, '--json'], env)));
    expect(e).toMatchObject({ ok: true, command: 'encrypt', encrypted: true, virtualSize: SIZE, cipher: 'aes-256-xts', unitSize: 512 });
    expect(e.subformat).toBe(kind === 'raw' ? 'monolithicFlat' : kind);
    expect(e.lockers).toHaveLength(1);
    expect(e.lockers[0]).toMatchObject({ kind: 'provider', providerId: 'local' });
    const firstKey = e.lockers[0].keyId;

    const info = json(ok(await vmseal(['info', enc, '--json'], env)));
    expect(info).toMatchObject({ ok: true, command: 'info', format: 'vmdk', encrypted: true, virtualSize: SIZE });
    expect(info.encryption).toMatchObject({ cipher: 'aes-256-xts', unitSize: 512, unlockable: true });
    expect(info.encryption.lockers[0]).toMatchObject({ providerId: 'local', keyId: firstKey });
    expect(await qemuVirtualSize(enc)).toBe(info.virtualSize);

    const infoText = ok(await vmseal(['info', enc], env)).stdout;
    expect(infoText).toMatch(/^encrypted: +yes$/m);
    expect(infoText).toMatch(/^unlockable now: +yes$/m);

    const v = json(ok(await vmseal(['verify', enc, '--against', sources[kind]!, '--json', '--sha256'], env)));
    expect(v).toMatchObject({ ok: true, encrypted: true, sha256: expected, againstSha256: expected });
    expect(v.contentHash).toMatch(/^[0-9a-f]{64}$/);
    expect(v.againstContentHash).toBe(v.contentHash);
    const quick = json(ok(await vmseal(['verify', enc, '--json'], env)));
    expect(quick.contentHash).toBe(v.contentHash);
    expect(quick.sha256).toBeUndefined();

    const s = json(ok(await vmseal(['rekey', enc, '--shallow', '--json'], env)));
    expect(s).toMatchObject({ ok: true, command: 'rekey', mode: 'shallow' });
    expect(s.lockers).toHaveLength(1);
    expect(s.lockers[0].keyId).not.toBe(firstKey);
    expect(await encryptedHash(enc)).toBe(expected);

    const d = json(ok(await vmseal(['rekey', enc, '--deep', '--json'], env)));
    expect(d).toMatchObject({ ok: true, command: 'rekey', mode: 'deep' });
    expect(d.diskId).not.toBe(e.diskId);
    expect(await encryptedHash(enc)).toBe(expected);
    expect(await qemuVirtualSize(enc)).toBe(SIZE);

    const outRaw = join(work, 'out.img');
    const human = ok(await vmseal(['decrypt', enc, outRaw, '--raw'], env));
    expect(human.stdout).toMatch(/^Decrypted .* \(raw\)\n/);
    expect(human.stderr).toBe(''); // no progress bar: stderr is not a terminal
    expect(await sha256File(outRaw)).toBe(expected);
    const outVmdk = join(work, 'out.vmdk');
    const dj = json(ok(await vmseal(['decrypt', enc, outVmdk, '--json'], env)));
    expect(dj).toMatchObject({ ok: true, encrypted: false });
    expect(await qemuContentHash(outVmdk, join(work, 'check.raw'))).toBe(expected);
    expect((await qemuImg(['info', '--output=json', outVmdk])).length).toBeGreaterThan(0);
  });
});

describe('in place', () => {
  it('encrypt --in-place, then resume finds nothing left to do, and the data is intact', async () => {
    const work = join(dir, 'inplace');
    await mkdir(work);
    const disk = join(work, 'disk.vmdk');
    await copyFile(sources.monolithicSparse!, disk);
    const e = json(ok(await vmseal(['encrypt', disk, '--in-place', '--json'], env)));
    expect(e).toMatchObject({ ok: true, encrypted: true, output: disk });
    expect(json(ok(await vmseal(['resume', disk, '--json'], env)))).toMatchObject({ ok: true, resumed: false });
    expect(await encryptedHash(disk)).toBe(expected);
    expect((await readdir(work)).sort()).toEqual(['disk.vmdk']);
  });
});

describe('streamOptimized', () => {
  it('an encrypted copy of a streamOptimized image becomes monolithicSparse; decrypting back to streamOptimized works', async () => {
    const work = join(dir, 'stream');
    await mkdir(work);
    const so = join(work, 'so.vmdk');
    await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', sources.raw!, so]);
    const r = ok(await vmseal(['encrypt', so, join(work, 'enc.vmdk'), '--json'], env));
    expect(json(r)).toMatchObject({ ok: true, subformat: 'monolithicSparse', encrypted: true });
    expect(r.stderr).toContain('writing monolithicSparse');
    expect(await encryptedHash(join(work, 'enc.vmdk'))).toBe(expected);
    const refused = await vmseal(['convert', join(work, 'enc.vmdk'), join(work, 'x.vmdk'), '--subformat', 'streamOptimized'], env);
    expect(refused.code).toBe(2);
    expectOneLineError(refused);
    ok(await vmseal(['decrypt', join(work, 'enc.vmdk'), join(work, 'plain-so.vmdk'), '--subformat', 'streamOptimized'], env));
    expect(await qemuContentHash(join(work, 'plain-so.vmdk'), join(work, 'check.raw'))).toBe(expected);
  });
});

describe('recovery passphrase and error paths (local provider)', () => {
  let work: string;
  let enc: string;
  beforeAll(async () => {
    work = join(dir, 'errors');
    await mkdir(work);
    enc = join(work, 'enc.vmdk');
    const r = json(
      ok(await vmseal(['encrypt', sources.monolithicSparse!, enc, '--recovery-passphrase', '--passphrase-file', pwFile, ...FAST_KDF, '--json'], env)),
    );
    expect(r.lockers.map((l: { kind: string }) => l.kind)).toEqual(['provider', 'passphrase']);
  });

  it('a recovery passphrase from a file or the environment opens the disk without the keystore', async () => {
    const noKeys = cleanEnv({ VMSEAL_HOME: join(work, 'empty-home') });
    expect(await encryptedHash(enc, noKeys, ['--passphrase-file', pwFile])).toBe(expected);
    const out = join(work, 'recovered.img');
    ok(await vmseal(['decrypt', enc, out, '--raw'], { ...noKeys, VMSEAL_PASSPHRASE: PASSPHRASE }));
    expect(await sha256File(out)).toBe(expected);
    const quiet = ok(await vmseal(['decrypt', enc, out, '--raw', '--force', '--quiet', '--passphrase-env', 'MY_PW'], { ...noKeys, MY_PW: PASSPHRASE }));
    expect(quiet.stdout + quiet.stderr).toBe('');
    const info = json(ok(await vmseal(['info', enc, '--json'], noKeys)));
    expect(info.encryption.unlockable).toBe(false);
  });

  it('a wrong passphrase: exit 3 and one line', async () => {
    const noKeys = cleanEnv({ VMSEAL_HOME: join(work, 'empty-home'), VMSEAL_PASSPHRASE: 'not the passphrase' });
    const r = await vmseal(['decrypt', enc, join(work, 'x.img'), '--raw'], noKeys);
    expect(r.code).toBe(3);
    const line = expectOneLineError(r);
    expect(line).toMatch(/^vmseal: cannot decrypt .*enc\.vmdk: /);
    expect(line).not.toContain('not the passphrase');
    await expect(stat(join(work, 'x.img'))).rejects.toThrow();
  });

  it('a wrong recovery passphrase fails loudly even when the keystore opens the disk (the recovery drill)', async () => {
    const wrongFile = join(work, 'wrong-pw.txt');
    await writeFile(wrongFile, 'not the passphrase\n', { mode: 0o600 });
    const r = await vmseal(['verify', enc, '--passphrase-file', wrongFile], env);
    expect(r.code).toBe(3);
    const line = expectOneLineError(r);
    expect(line).toMatch(/the given recovery passphrase does not open .*enc\.vmdk/);
    expect(line).not.toContain('not the passphrase');
    const j = json(await vmseal(['decrypt', enc, join(work, 'y.img'), '--raw', '--json'], { ...env, VMSEAL_PASSPHRASE: 'not the passphrase' }));
    expect(j.error.code).toBe('ERR_WRONG_KEY');
    await expect(stat(join(work, 'y.img'))).rejects.toThrow();
    // A disk without a recovery passphrase cannot be opened by one either: say so instead of passing the drill.
    const plainKeyed = join(work, 'no-phrase.vmdk');
    ok(await vmseal(['encrypt', sources.raw!, plainKeyed], env));
    const none = await vmseal(['verify', plainKeyed, '--passphrase-file', pwFile], env);
    expect(none.code).toBe(3);
    expect(expectOneLineError(none)).toMatch(/no recovery passphrase/);
    // The right passphrase still passes with the keystore present.
    expect(await encryptedHash(enc, env, ['--passphrase-file', pwFile])).toBe(expected);
  });

  it('a 2 TiB monolithicSparse (as qemu-img makes it) with little data is encrypted as monolithicSparse', async () => {
    // The 2 TiB limit of a sparse extent file is on file offsets, not the capacity (docs/vmdk.md):
    // only data plus metadata past 2 TiB cannot be written as one sparse file.
    const big = join(work, 'big-2t.vmdk');
    const enc = join(work, 'big-enc.vmdk');
    await qemuImg(['create', '-f', 'vmdk', '-o', 'subformat=monolithicSparse', big, '2T']);
    try {
      const e = json(ok(await vmseal(['encrypt', big, enc, '--json'], env)));
      expect(e.subformat).toBe('monolithicSparse');
      const info = json(ok(await vmseal(['info', enc, '--json'], env)));
      expect(info.virtualSize).toBe(2 ** 41);
    } finally {
      await rm(big, { force: true });
      await rm(enc, { force: true });
    }
  });

  it('missing input: exit 1 and one line', async () => {
    const r = await vmseal(['encrypt', join(work, 'nope.vmdk'), join(work, 'out.vmdk')], env);
    expect(r.code).toBe(1);
    expect(expectOneLineError(r)).toBe(
      `vmseal: cannot encrypt ${join(work, 'nope.vmdk')}: the input ${join(work, 'nope.vmdk')} does not exist. Check the path.`,
    );
  });

  it('existing output: refused without --force, replaced with it', async () => {
    const out = join(work, 'exists.vmdk');
    await writeFile(out, 'precious');
    const r = await vmseal(['encrypt', sources.raw!, out], env);
    expect(r.code).toBe(1);
    expect(expectOneLineError(r)).toContain('--force');
    expect(await sha256File(out)).not.toBe(expected);
    ok(await vmseal(['encrypt', sources.raw!, out, '--force'], env));
    expect(await encryptedHash(out)).toBe(expected);
  });

  it('encrypted where plain is expected, and the reverse: exit 5', async () => {
    const r1 = await vmseal(['encrypt', enc, join(work, 'twice.vmdk')], env);
    expect(r1.code).toBe(5);
    expectOneLineError(r1);
    const r2 = await vmseal(['decrypt', sources.monolithicSparse!, join(work, 'plain.img')], env);
    expect(r2.code).toBe(5);
    expectOneLineError(r2);
  });

  it('verify against a different image: exit 6, one line naming the difference', async () => {
    const other = join(work, 'other.img');
    await writeSampleDisk(other, SIZE, 8);
    const r = await vmseal(['verify', enc, '--against', other, '--json', '--sha256'], env);
    expect(r.code).toBe(6);
    const j = json(r);
    expect(j).toMatchObject({ ok: false, command: 'verify', sha256: expected });
    expect(typeof j.firstMismatch).toBe('number');
    expect(expectOneLineError(r)).toMatch(/^vmseal: verify .*differs/);
  });

  it('a disk in use (its .lck held, as by a running VM): exit 7, nothing changed', async () => {
    const before = json(ok(await vmseal(['info', enc, '--json'], env)));
    await mkdir(`${enc}.lck`);
    try {
      const r = await vmseal(['rekey', enc, '--shallow'], env);
      expect(r.code).toBe(7);
      expect(expectOneLineError(r)).toContain('.lck');
    } finally {
      await rm(`${enc}.lck`, { recursive: true });
    }
    expect(json(ok(await vmseal(['info', enc, '--json'], env))).encryption.lockers).toEqual(before.encryption.lockers);
  });

  it('passphrases are not accepted on argv, and are never echoed', async () => {
    for (const args of [
      ['encrypt', sources.raw!, join(work, 'p.vmdk'), '--passphrase', 'hunter2hunter2'],
      ['encrypt', sources.raw!, join(work, 'p.vmdk'), '--recovery-passphrase=hunter2hunter2'],
      ['decrypt', enc, join(work, 'p.img'), '--password=hunter2hunter2'],
    ]) {
      const r = await vmseal(args, env);
      expect(r.code).toBe(2);
      expect(expectOneLineError(r)).toContain('never takes passphrases from the command line');
      expect(r.stderr + r.stdout).not.toContain('hunter2');
    }
    await expect(stat(join(work, 'p.vmdk'))).rejects.toThrow();
  });

  it('on a terminal: the passphrase is prompted for twice without echo, and a progress bar is drawn', async () => {
    const out = join(work, 'tty.vmdk');
    const typed = 'typed at the terminal';
    const r = await vmsealOnTty(['encrypt', sources.raw!, out, '--recovery-passphrase', ...FAST_KDF], env, [
      ['Enter the new recovery passphrase: ', `${typed}\r`],
      ['Repeat the new recovery passphrase: ', `${typed}\r`],
    ]);
    expect(r.unanswered).toEqual([]);
    expect(r.code, r.transcript).toBe(0);
    expect(r.transcript).not.toContain(typed);
    expect(r.transcript).toMatch(/encrypt +\[[#-]+\] +\d+% \| [\d.]+ [KMG]?i?B \/ 8.00 MiB \|/);
    expect(r.transcript).toContain('locked by recovery passphrase');
    const noKeys = cleanEnv({ VMSEAL_HOME: join(work, 'empty-home') });
    const d = await vmsealOnTty(['decrypt', out, join(work, 'tty.img'), '--raw', '--recovery-passphrase'], noKeys, [
      ['Enter the recovery passphrase', `${typed}\r`],
    ]);
    expect(d.code, d.transcript).toBe(0);
    expect(d.transcript).not.toContain(typed);
    expect(await sha256File(join(work, 'tty.img'))).toBe(expected);
  });

  it('no passphrase source and no terminal: exit 2 instead of waiting for a prompt', async () => {
    const r = await vmseal(['encrypt', sources.raw!, join(work, 'np.vmdk'), '--recovery-passphrase'], env);
    expect(r.code).toBe(2);
    expect(expectOneLineError(r)).toContain('stdin is not a terminal');
  });

  it('usage errors: exit 2, one line, and --json still prints one object', async () => {
    const r1 = await vmseal(['encrypt', sources.raw!], env);
    expect(r1.code).toBe(2);
    expectOneLineError(r1);
    const r2 = await vmseal(['encrypt', sources.raw!, join(work, 'u.vmdk'), '--unit-size', '1000', '--json'], env);
    expect(r2.code).toBe(2);
    expect(expectOneLineError(r2)).toContain('--unit-size "1000" is not supported');
    expect(json(r2)).toMatchObject({ ok: false, error: { exitCode: 2 } });
    const r3 = await vmseal(['frobnicate'], env);
    expect(r3.code).toBe(2);
    expectOneLineError(r3);
    const r4 = await vmseal(['encrypt', sources.raw!, join(work, 'u.vmdk'), '--subformat', 'streamOptimized'], env);
    expect(r4.code).toBe(2);
    expect(expectOneLineError(r4)).toContain('streamOptimized');
    const r5 = await vmseal(
      ['encrypt', sources.raw!, join(work, 'u.vmdk'), '--kms', '127.0.0.1:1', '--kms-ca', pwFile, '--kms-cert', pwFile, '--kms-key', pwFile],
      env,
    );
    expect(r5.code).toBe(2);
    expect(expectOneLineError(r5)).toContain(`--kms-ca ${pwFile} is not a PEM file`);
    expect(r5.stderr).not.toContain(PASSPHRASE);
    const r6 = await vmseal(['encrypt', sources.raw!, join(work, 'u.vmdk'), '--key-provider', 'kmip'], env);
    expect(r6.code).toBe(2);
    expect(expectOneLineError(r6)).toContain('the KMIP key provider needs --kms, --kms-ca, --kms-cert, --kms-key');
    const help = ok(await vmseal(['encrypt', '--help'], env));
    expect(help.stdout).toContain('--recovery-passphrase');
    expect(ok(await vmseal(['--help'], env)).stdout).toContain('Exit codes:');
  });

  it('keys init, list, backup and restore', async () => {
    const h2 = join(work, 'home2');
    const e2 = cleanEnv({ VMSEAL_HOME: h2 });
    expect(json(ok(await vmseal(['keys', 'init', '--json'], e2)))).toMatchObject({ ok: true, created: true });
    json(ok(await vmseal(['keys', 'create', '--name', 'k1', '--json'], e2)));
    const list = json(ok(await vmseal(['keys', 'list', '--json'], e2)));
    expect(list.keys).toHaveLength(1);
    expect(JSON.stringify(list)).not.toMatch(/wrapped|material/);
    const backup = join(work, 'keys.backup');
    expect(json(ok(await vmseal(['keys', 'backup', backup, '--passphrase-file', pwFile, '--json'], e2)))).toMatchObject({ keys: 1 });
    const h3 = join(work, 'home3');
    const r = json(ok(await vmseal(['keys', 'restore', backup, '--home', h3, '--json'], { ...e2, VMSEAL_PASSPHRASE: PASSPHRASE })));
    expect(r).toMatchObject({ added: 1 });
    const bad = await vmseal(['keys', 'restore', backup, '--home', h3], { ...e2, VMSEAL_PASSPHRASE: 'wrong passphrase' });
    expect(bad.code).toBe(3);
    expectOneLineError(bad);
  });

  it('Ctrl-C: exit 130 and nothing left behind', async () => {
    const big = join(work, 'big.img');
    await writeSampleDisk(big, 256 * MiB, 3);
    const outDir = join(work, 'sigint');
    await mkdir(outDir);
    const child = vmsealChild(['encrypt', big, join(outDir, 'big.vmdk'), '--chunk-size', '4K', '--threads', '1'], env);
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const exited = new Promise<number | null>((res) => child.on('close', (code) => res(code)));
    // Wait until the job has started writing (a temporary file appears), then interrupt.
    for (let i = 0; i < 500 && (await readdir(outDir)).length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    child.kill('SIGINT');
    const code = await exited;
    expect(code).toBe(130);
    expect(stderr.trim().split('\n')).toHaveLength(1);
    expect(stderr).toContain('interrupted');
    expect(await readdir(outDir)).toEqual([]);
    await rm(big);
  });
});

describe('batch convert (the disk-image conversion script)', () => {
  it('converts a directory, continues past a bad image, summarises, exits 1', async () => {
    const inDir = join(dir, 'batch-in');
    const outDir = join(dir, 'batch-out');
    await mkdir(inDir);
    await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicSparse', sources.raw!, join(inDir, 'a.vmdk')]);
    await qemuImg(['convert', '-O', 'vmdk', '-o', 'subformat=monolithicFlat', sources.raw!, join(inDir, 'b.vmdk')]);
    await writeFile(join(inDir, 'bad.vmdk'), Buffer.concat([Buffer.from('KDMV'), Buffer.alloc(100, 0xff)]));
    await qemuImg(['convert', '-O', 'raw', sources.raw!, join(inDir, 'c.img')]);

    const r = await vmseal(['convert', inDir, outDir, '--subformat', 'monolithicSparse', '--encrypt', '--json'], env);
    expect(r.code).toBe(1);
    const j = json(r);
    expect(j).toMatchObject({ ok: false, command: 'convert', batch: true, images: 4, converted: 3, failed: 1 });
    const bad = j.results.find((x: { input: string }) => x.input.endsWith('bad.vmdk'));
    expect(bad).toMatchObject({ ok: false, bytes: 0 });
    expect(bad.error.reason.length).toBeGreaterThan(0);
    for (const x of j.results.filter((y: { ok: boolean }) => y.ok)) {
      expect(x.bytes).toBeGreaterThan(0);
      expect(x.seconds).toBeGreaterThanOrEqual(0);
      expect(await encryptedHash(x.output)).toBe(expected);
    }
    expect((await readdir(outDir)).sort()).toEqual(['a.vmdk', 'b.vmdk', 'c.vmdk']);

    // The same images from a list, decrypted to raw, with the human summary.
    const list = join(dir, 'batch.list');
    await writeFile(list, `# encrypted images\n${join(outDir, 'a.vmdk')}\n${join(dir, 'missing.vmdk')}\n${join(outDir, 'c.vmdk')}\n`);
    const plainDir = join(dir, 'batch-plain');
    const h = await vmseal(['convert', '--list', list, plainDir, '--subformat', 'raw', '--decrypt'], env);
    expect(h.code).toBe(1);
    expect(h.stdout).toMatch(/^\[1\/3\] ok .*a\.vmdk/m);
    expect(h.stdout).toMatch(/^\[2\/3\] FAILED .*missing\.vmdk: /m);
    expect(h.stdout).toMatch(/^2 of 3 images converted, 1 failed/m);
    expectOneLineError(h);
    expect(await sha256File(join(plainDir, 'a.img'))).toBe(expected);
    expect(await sha256File(join(plainDir, 'c.img'))).toBe(expected);
  });
});

describe('KMIP key provider (a real PyKMIP server)', () => {
  let kms: PyKmip;
  let kenv: NodeJS.ProcessEnv;
  let work: string;
  beforeAll(async () => {
    kms = await startPyKmip({ nodes: 1 });
    work = join(dir, 'kmip');
    await mkdir(work);
    kenv = cleanEnv({
      VMSEAL_HOME: join(work, 'home'),
      VMSEAL_KMS: kms.endpoints.map((e) => `${e.host}:${e.port}`).join(','),
      VMSEAL_KMS_CA: kms.caPath,
      VMSEAL_KMS_CERT: kms.clientCertPath,
      VMSEAL_KMS_KEY: kms.clientKeyPath,
    });
  });
  afterAll(async () => {
    await kms?.stop();
  });

  it('encrypt → info → verify → shallow rekey → deep rekey → decrypt; KMS down → locked, recovery passphrase opens', async () => {
    const enc = join(work, 'enc.vmdk');
    const e = json(
      ok(
        await vmseal(
          ['encrypt', sources.monolithicSparse!, enc, '--kms-id', 'pykmip', '--recovery-passphrase', '--passphrase-file', pwFile, ...FAST_KDF, '--json'],
          kenv,
        ),
      ),
    );
    expect(e.lockers).toHaveLength(2);
    expect(e.lockers[0]).toMatchObject({ kind: 'provider', providerId: 'pykmip' });
    const firstKey = e.lockers[0].keyId;

    const info = json(ok(await vmseal(['info', enc, '--json'], kenv)));
    expect(info.encryption.unlockable).toBe(true);
    expect(info.encryption.lockers.map((l: { kind: string }) => l.kind)).toEqual(['provider', 'passphrase']);
    expect(await qemuVirtualSize(enc)).toBe(info.virtualSize);
    // Unlocking needs no --kms-id: the disk names its provider.
    expect(await encryptedHash(enc, kenv)).toBe(expected);

    const s = json(ok(await vmseal(['rekey', enc, '--shallow', '--json'], kenv)));
    const providerLockers = s.lockers.filter((l: { kind: string }) => l.kind === 'provider');
    expect(providerLockers).toHaveLength(1);
    expect(providerLockers[0]).toMatchObject({ providerId: 'pykmip' });
    expect(providerLockers[0].keyId).not.toBe(firstKey);
    expect(s.lockers.some((l: { kind: string }) => l.kind === 'passphrase')).toBe(true);
    expect(await encryptedHash(enc, kenv)).toBe(expected);

    // A deep rekey keeps the recovery passphrase only if asked to, and then needs it.
    const refused = await vmseal(['rekey', enc, '--deep'], kenv);
    expect(refused.code).toBe(2);
    expect(expectOneLineError(refused)).toContain('recovery passphrase');
    json(ok(await vmseal(['rekey', enc, '--deep', '--passphrase-file', pwFile, '--keep-recovery-passphrase', ...FAST_KDF, '--json'], kenv)));
    expect(await encryptedHash(enc, kenv)).toBe(expected);

    const out = join(work, 'out.img');
    ok(await vmseal(['decrypt', enc, out, '--raw'], kenv));
    expect(await sha256File(out)).toBe(expected);

    await kms.stopNode(0);
    const down = cleanEnv({ ...kenv, VMSEAL_KMS: kenv.VMSEAL_KMS });
    const locked = await vmseal(['decrypt', enc, join(work, 'locked.img'), '--raw', '--kms-timeout', '2000'], down);
    expect(locked.code).toBe(3);
    expectOneLineError(locked);
    const lockedInfo = json(ok(await vmseal(['info', enc, '--json', '--kms-timeout', '2000'], down)));
    expect(lockedInfo.encryption.unlockable).toBe(false);
    const noKms = await vmseal(['encrypt', sources.raw!, join(work, 'new.vmdk'), '--kms-timeout', '2000'], down);
    expect(noKms.code).toBe(4);
    expect(expectOneLineError(noKms)).toContain('key server');
    await expect(stat(join(work, 'new.vmdk'))).rejects.toThrow();

    const noKmsConfigured = cleanEnv({ VMSEAL_HOME: join(work, 'home') });
    const unconfigured = await vmseal(['decrypt', enc, join(work, 'locked.img'), '--raw'], noKmsConfigured);
    expect(unconfigured.code).toBe(3);
    expect(expectOneLineError(unconfigured)).toContain('held by the KMIP provider pykmip: give --kms');

    const rescued = join(work, 'rescued.img');
    ok(await vmseal(['decrypt', enc, rescued, '--raw', '--kms-timeout', '2000'], { ...down, VMSEAL_PASSPHRASE: PASSPHRASE }));
    expect(await sha256File(rescued)).toBe(expected);
  });
});

describe('vmseal demo', () => {
  it('completes on a fresh machine and leaves nothing behind', async () => {
    const r = await vmseal(['demo', '--size', '32M', '--json'], cleanEnv({}));
    const j = json(ok(r));
    expect(j).toMatchObject({ ok: true, command: 'demo', roundTripOk: true, temporaryHome: true, plaintextFoundInCiphertext: false });
    expect(j.sample.sha256).toBe(j.decrypt.sha256);
    await expect(stat(j.dir)).rejects.toThrow();
    const human = ok(await vmseal(['demo', '--size', '16M'], cleanEnv({ VMSEAL_HOME: join(dir, 'demo-home') })));
    expect(human.stdout).toContain('Round trip OK');
    expect(human.stdout).toContain(join(dir, 'demo-home'));
  });
});
