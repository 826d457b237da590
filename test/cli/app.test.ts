// In-process runs of the command line (argument parsing, usage errors, --json, keys): fast checks
// of the grammar; the end-to-end file runs the real binary.
import { Writable } from 'node:stream';
import { PassThrough } from 'node:stream';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/cli/app.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-cli-app-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function cli(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const sink = (f: (s: string) => void) =>
    new Writable({
      write(c, _e, cb) {
        f(String(c));
        cb();
      },
    });
  const code = await run(argv, {
    env,
    streams: { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)) },
    io: { input: new PassThrough(), output: sink(() => undefined) },
    signal: new AbortController().signal,
  });
  return { code, stdout, stderr };
}

describe('command line grammar', () => {
  it('prints help with the exit codes, and per-command help with examples', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Exit codes:');
    for (const c of ['encrypt', 'decrypt', 'convert', 'rekey', 'info', 'verify', 'resume', 'keys', 'demo']) expect(r.stdout).toContain(c);
    const e = await cli(['encrypt', '--help']);
    expect(e.code).toBe(0);
    expect(e.stdout).toContain('Examples:');
    expect(e.stdout).toContain('--kms <host:port,...>');
    expect(e.stdout).not.toContain('--chunk-size');
  });
  it('turns commander errors into one vmseal line with exit code 2', async () => {
    for (const argv of [['frobnicate'], ['encrypt'], ['encrypt', 'a', 'b', '--bogus'], ['decrypt', 'a'], ['encrypt', 'a', 'b', 'c']]) {
      const r = await cli(argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.stderr.trim().split('\n'), argv.join(' ')).toHaveLength(1);
      expect(r.stderr).toMatch(/^vmseal: .*\. Run `vmseal.* --help` for usage\.\n$/);
      expect(r.stderr).not.toContain('\n  at ');
      expect(r.stdout).toBe('');
    }
  });
  it('without a command, prints the help and exits 2', async () => {
    const r = await cli([]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('Usage: vmseal');
    const k = await cli(['keys', 'lst']);
    expect(k.stderr).toBe("vmseal: keys lst: unknown command 'lst' (did you mean list?). Run `vmseal keys --help` for usage.\n");
  });
  it('validates option values before doing anything', async () => {
    const r = await cli(['encrypt', 'a.img', 'b.vmdk', '--cipher', 'des']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('vmseal: encrypt: --cipher "des" is not supported. Use aes-256-xts or aes-128-xts.\n');
  });
  it('--json anywhere on the line gives one JSON object, also for errors', async () => {
    const r = await cli(['encrypt', 'a.img', 'b.vmdk', '--subformat', 'qcow9', '--json']);
    expect(r.code).toBe(2);
    const j = JSON.parse(r.stdout);
    expect(j).toEqual({
      ok: false,
      command: 'encrypt',
      error: { code: 'ERR_CLI_USAGE', message: '--subformat "qcow9" is not a known subformat', exitCode: 2 },
    });
    const r2 = await cli(['--json', 'encrypt', join(dir, 'missing.img'), join(dir, 'o.vmdk')]);
    expect(r2.code).toBe(1);
    expect(JSON.parse(r2.stdout).error.code).toBe('ERR_CLI_INPUT');
  });
  it('refuses passphrases on argv before parsing, without echoing them', async () => {
    const r = await cli(['decrypt', 'a', 'b', '--passphrase=swordfish123']);
    expect(r.code).toBe(2);
    expect(r.stderr).not.toContain('swordfish');
    expect(r.stderr).toContain('never takes passphrases from the command line');
  });
  it('checks contradictory options', async () => {
    expect((await cli(['rekey', 'd.vmdk'])).stderr).toContain('rekey needs --shallow or --deep');
    expect((await cli(['rekey', 'd.vmdk', '--shallow', '--deep'])).code).toBe(2);
    expect((await cli(['rekey', 'd.vmdk', '--shallow', '--in-place'])).stderr).toContain('belong to a deep rekey');
    expect((await cli(['decrypt', 'a', 'b', '--raw', '--subformat', 'monolithicFlat'])).stderr).toContain('contradict');
    expect((await cli(['convert', 'a', 'b', '--encrypt', '--decrypt'])).stderr).toContain('contradict');
    expect((await cli(['encrypt', 'a', 'b', '--in-place'])).stderr).toContain('give no OUT');
    expect((await cli(['convert', '--list', 'l', 'a', 'b'])).code).toBe(2);
  });
});

describe('decrypt --mode', () => {
  it('writes 0600 by default and the octal --mode when given; refuses a mode that is not octal', async () => {
    const { encryptDisk } = await import('../../src/pipeline/index.js');
    const { statSync, writeFileSync } = await import('node:fs');
    const old = process.umask(0o022);
    try {
      const raw = join(dir, 'mode-plain.raw');
      writeFileSync(raw, Buffer.alloc(1 << 20, 7));
      const enc = join(dir, 'mode-enc.vmdk');
      await encryptDisk(raw, enc, { lockers: [{ kind: 'passphrase', passphrase: 'pw', rounds: 1000 }] });
      const env = { VMSEAL_PASSPHRASE: 'pw' };
      const plain = await cli(['decrypt', enc, join(dir, 'mode-default.raw'), '--raw'], env);
      expect(plain.code, plain.stderr).toBe(0);
      expect(statSync(join(dir, 'mode-default.raw')).mode & 0o777).toBe(0o600);
      const shared = await cli(['decrypt', enc, join(dir, 'mode-0640.raw'), '--raw', '--mode', '0640'], env);
      expect(shared.code, shared.stderr).toBe(0);
      expect(statSync(join(dir, 'mode-0640.raw')).mode & 0o777).toBe(0o640);
      for (const bad of ['999', '0o640', 'rw-r-----', '', '01000', '-640', '64 0']) {
        const r = await cli(['decrypt', enc, join(dir, 'mode-bad.raw'), '--raw', '--mode', bad], env);
        expect(r.code, bad).toBe(2);
        expect(r.stderr).toContain('--mode');
      }
    } finally {
      process.umask(old);
    }
  });
});

describe('keys commands in-process', () => {
  it('init, create, list, backup and restore a keystore', async () => {
    const home = join(dir, 'home');
    const init = await cli(['keys', 'init', '--home', home, '--json']);
    expect(init.code).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ ok: true, command: 'keys init', created: true, protection: 'keyfile' });
    const again = await cli(['keys', 'init', '--home', home]);
    expect(again.stdout).toContain('already exists');
    const created = JSON.parse((await cli(['keys', 'create', '--home', home, '--name', 'first', '--json'])).stdout);
    expect(created).toMatchObject({ ok: true, providerId: 'local' });
    const list = await cli(['keys', 'list', '--home', home]);
    expect(list.stdout).toContain(created.keyId);
    expect(list.stdout).toContain('first');
    const backup = join(dir, 'backup.json');
    const b = await cli(['keys', 'backup', backup, '--home', home, '--passphrase-env', 'BK'], { BK: 'backup passphrase' });
    expect(b.code, b.stderr).toBe(0);
    const again2 = await cli(['keys', 'backup', backup, '--home', home, '--passphrase-env', 'BK'], { BK: 'backup passphrase' });
    expect(again2.code).toBe(1);
    expect(again2.stderr).toContain('--force');
    const r = await cli(['keys', 'restore', backup, '--home', join(dir, 'home2'), '--json'], { VMSEAL_PASSPHRASE: 'backup passphrase' });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ added: 1, unchanged: 0 });
    const wrong = await cli(['keys', 'restore', backup, '--home', join(dir, 'home2')], { VMSEAL_PASSPHRASE: 'wrong passphrase' });
    expect(wrong.code).toBe(3);
    expect(wrong.stderr.trim().split('\n')).toHaveLength(1);
  });
  it('a passphrase-protected keystore needs its passphrase', async () => {
    const home = join(dir, 'home-pw');
    const init = await cli(['keys', 'init', '--home', home, '--with-passphrase', '--json'], { VMSEAL_HOME_PASSPHRASE: 'keystore passphrase' });
    expect(init.code, init.stderr).toBe(0);
    expect(JSON.parse(init.stdout)).toMatchObject({ created: true, protection: 'passphrase' });
    const without = await cli(['keys', 'list', '--home', home]);
    expect(without.code, without.stderr).toBe(3);
    expect(without.stderr).toMatch(/^vmseal: cannot list the local keys: .*VMSEAL_HOME_PASSPHRASE.*\.\n$/);
    const withIt = await cli(['keys', 'list', '--home', home], { VMSEAL_HOME_PASSPHRASE: 'keystore passphrase' });
    expect(withIt.code, withIt.stderr).toBe(0);
    const noSource = await cli(['keys', 'init', '--home', join(dir, 'home-pw2'), '--with-passphrase']);
    expect(noSource.code).toBe(2);
  });
  it('list of a missing keystore says to run keys init', async () => {
    const r = await cli(['keys', 'list', '--home', join(dir, 'nothing')]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('vmseal keys init');
  });
});

describe('input problems get clear words and the right exit code', () => {
  const home = (): string => join(dir, 'input-home');
  it('an empty raw image and one that is not whole sectors: exit 5, naming the file and the problem', async () => {
    const { writeFile } = await import('node:fs/promises');
    const empty = join(dir, 'empty.img');
    const odd = join(dir, 'odd.img');
    await writeFile(empty, '');
    await writeFile(odd, Buffer.alloc(1000, 1));
    for (const argv of [
      ['encrypt', empty, join(dir, 'e.vmdk')],
      ['convert', empty, join(dir, 'e2.vmdk')],
    ]) {
      const r = await cli([...argv, '--home', home()]);
      expect(r.code, r.stderr).toBe(5);
      expect(r.stderr).toContain(`${empty} is empty`);
      expect(r.stderr).not.toContain('options.capacity');
    }
    const r = await cli(['encrypt', odd, join(dir, 'o.vmdk'), '--home', home()]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toMatch(/odd\.img is 1000 bytes, not a multiple of 512/);
  });
  it('a missing output folder is reported as a missing folder', async () => {
    const { writeFile } = await import('node:fs/promises');
    const src = join(dir, 'ok.img');
    await writeFile(src, Buffer.alloc(64 * 1024));
    const out = join(dir, 'no-such-dir', 'x.vmdk');
    const r = await cli(['encrypt', src, out, '--home', home()]);
    expect(r.code, r.stderr).toBe(1);
    expect(r.stderr).toContain(`the output folder ${join(dir, 'no-such-dir')} does not exist`);
    expect(r.stderr).not.toMatch(/\.lck|\.tmp/);
  });
  it('an already encrypted input gets one hint; decrypting a disk onto itself does not offer --in-place', async () => {
    const { writeFile } = await import('node:fs/promises');
    const src = join(dir, 'plain.img');
    await writeFile(src, Buffer.alloc(64 * 1024, 7));
    const enc = join(dir, 'once.vmdk');
    const e = await cli(['encrypt', src, enc, '--home', home()]);
    expect(e.code, e.stderr).toBe(0);
    const again = await cli(['encrypt', enc, join(dir, 'twice.vmdk'), '--home', home()]);
    expect(again.code).toBe(5);
    expect(again.stderr.match(/\buse\b/g) ?? [], again.stderr).toHaveLength(1);
    const self = await cli(['decrypt', enc, enc, '--force', '--home', home()]);
    expect(self.code).toBe(2);
    expect(self.stderr).not.toContain('--in-place');
  });
  it('encrypt --help offers only the subformats it can write', async () => {
    const r = await cli(['encrypt', '--help']);
    // The help text wraps: fold it, then take the list after the description's last ": ".
    const text = r.stdout.slice(r.stdout.indexOf('--subformat'), r.stdout.indexOf('--recovery-passphrase')).replace(/\s+/g, ' ').trim();
    const choices = text.slice(text.lastIndexOf(': ') + 2).split(/,\s*/);
    expect(choices).toContain('monolithicSparse');
    expect(choices).not.toContain('raw');
    expect(choices).not.toContain('streamOptimized');
  });
  it('notes are not printed with the error prefix', async () => {
    const src = join(dir, 'plain.img');
    const r = await cli(['encrypt', src, join(dir, 'newhome.vmdk'), '--home', join(dir, 'fresh-home')]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('created a new local keystore');
    expect(r.stderr).not.toMatch(/^vmseal: /m);
  });
});

describe('re-running a batch', () => {
  it('existing outputs: the hint says --force or --skip-existing, and --skip-existing converts only the rest', async () => {
    const { mkdir, writeFile, rm: remove } = await import('node:fs/promises');
    const src = join(dir, 'batch-src');
    const out = join(dir, 'batch-out');
    await mkdir(src);
    await writeFile(join(src, 'a.img'), Buffer.alloc(64 * 1024, 1));
    await writeFile(join(src, 'b.img'), Buffer.alloc(64 * 1024, 2));
    const first = await cli(['convert', src, out, '--subformat', 'monolithicSparse']);
    expect(first.code, first.stdout + first.stderr).toBe(0);
    const again = await cli(['convert', src, out, '--subformat', 'monolithicSparse']);
    expect(again.code).toBe(1);
    const text = again.stdout + again.stderr;
    expect(text).toContain('--skip-existing');
    expect(text).toContain('--force');
    expect(text).not.toMatch(/(?<!-)\bforce to\b/);
    await remove(join(out, 'b.vmdk'));
    const skip = await cli(['convert', src, out, '--subformat', 'monolithicSparse', '--skip-existing', '--json']);
    expect(skip.code, skip.stderr).toBe(0);
    const j = JSON.parse(skip.stdout);
    expect(j).toMatchObject({ ok: true, converted: 1, skipped: 1, failed: 0 });
    const contradicts = await cli(['convert', src, out, '--subformat', 'monolithicSparse', '--skip-existing', '--force']);
    expect(contradicts.code).toBe(2);
    // One image: the existing-output hint names --force once, never the library's bare "force".
    const single = await cli(['convert', join(src, 'a.img'), join(out, 'a.vmdk')]);
    expect(single.code).toBe(1);
    expect(single.stderr).not.toMatch(/(?<!-)\bforce to\b/);
    expect(single.stderr.match(/--force/g)).toHaveLength(1);
  });
});
