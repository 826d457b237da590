// In-process tests of the CLI's building blocks: option parsing, error lines and exit codes,
// passphrase sources, the batch runner, the sample disk, the output modes.
import { PassThrough, Writable } from 'node:stream';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmsealError } from '../../src/errors.js';
import { CliError, classify, formatError } from '../../src/cli/errors.js';
import { ExitCode } from '../../src/cli/exit-codes.js';
import { parseCipher, parseEndpoints, parseInteger, parseSize, parseSubformat, parseUnitSize } from '../../src/cli/parse.js';
import { passphraseSource, promptHidden, readPassphrase, rejectSecretsOnArgv } from '../../src/cli/passphrase.js';
import { batchExitCode, extentFileNames, listImagesInDirectory, outputNameFor, planBatch, readImageList, runBatch } from '../../src/cli/batch.js';
import { sha256File, writeSampleDisk } from '../../src/cli/sample-disk.js';
import { Output, progressLayout } from '../../src/cli/output.js';
import { KeySession, resolveHome, withEnvDefaults } from '../../src/cli/key-session.js';
import { makeCtx } from '../../src/cli/context.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-cli-units-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function usage(fn: () => unknown): CliError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CliError);
    expect((err as CliError).exitCode).toBe(ExitCode.USAGE);
    return err as CliError;
  }
  throw new Error('expected a usage error');
}

describe('option parsing', () => {
  it('parses sizes with binary suffixes', () => {
    expect(parseSize('64M', '--size')).toBe(64 * 1024 * 1024);
    expect(parseSize('64MiB', '--size')).toBe(64 * 1024 * 1024);
    expect(parseSize('1.5G', '--size')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('4096', '--size')).toBe(4096);
    expect(parseSize('2k', '--size')).toBe(2048);
  });
  it('refuses bad sizes naming the option and the value', () => {
    expect(usage(() => parseSize('12X', '--size')).message).toBe('--size "12X" is not a size');
    expect(usage(() => parseSize('-1M', '--size')).message).toBe('--size "-1M" is not a size');
    expect(usage(() => parseSize('0.3', '--size')).message).toBe('--size "0.3" is not a whole number of bytes');
    expect(usage(() => parseSize('1M', '--size', { min: 16 * 1024 * 1024 })).message).toBe('--size "1M" is out of range');
  });
  it('parses host:port lists, with the KMIP default port and IPv6 brackets', () => {
    expect(parseEndpoints('kms1.example.com:5696, 10.0.0.2:15696,[::1]:7000,kms3')).toEqual([
      { host: 'kms1.example.com', port: 5696 },
      { host: '10.0.0.2', port: 15696 },
      { host: '::1', port: 7000 },
      { host: 'kms3', port: 5696 },
    ]);
  });
  it('refuses bad endpoints', () => {
    expect(usage(() => parseEndpoints('')).message).toBe('--kms is empty');
    expect(usage(() => parseEndpoints('host:99999')).message).toBe('--kms element "host:99999" has port 99999');
    expect(usage(() => parseEndpoints('host:port')).message).toBe('--kms element "host:port" is not host:port');
    expect(usage(() => parseEndpoints('::1:5696')).message).toBe('--kms element "::1:5696" is not host:port');
  });
  it('parses subformats case-insensitively and refuses unknown ones', () => {
    expect(parseSubformat('monolithicsparse')).toBe('monolithicSparse');
    expect(parseSubformat('RAW')).toBe('raw');
    const err = usage(() => parseSubformat('qcow2'));
    expect(err.message).toBe('--subformat "qcow2" is not a known subformat');
    expect(err.hint).toContain('monolithicFlat');
  });
  it('parses ciphers, unit sizes and integers', () => {
    expect(parseCipher('AES-128-XTS')).toBe('aes-128-xts');
    expect(parseUnitSize('4096')).toBe(4096);
    expect(usage(() => parseUnitSize('1024')).message).toBe('--unit-size "1024" is not supported');
    expect(usage(() => parseCipher('aes-256-cbc')).message).toBe('--cipher "aes-256-cbc" is not supported');
    expect(parseInteger('15', '--threads', { min: 1, max: 256 })).toBe(15);
    expect(usage(() => parseInteger('1.5', '--threads', { min: 1, max: 256 })).message).toBe('--threads "1.5" is not a whole number from 1 to 256');
  });
});

describe('error lines and exit codes', () => {
  it("maps the layers' codes to the documented exit codes", () => {
    const code = (c: string): number => classify(new VmsealError(c, 'x')).exitCode;
    expect(code('ERR_WRONG_KEY')).toBe(3);
    expect(code('ERR_DISK_LOCKED')).toBe(3);
    expect(code('ERR_KMS_UNAVAILABLE')).toBe(4);
    expect(code('ERR_KMIP_TLS')).toBe(4);
    expect(code('ERR_VMDK_FORMAT')).toBe(5);
    expect(code('ERR_DISK_ENCRYPTED')).toBe(5);
    expect(code('ERR_NOT_ENCRYPTED')).toBe(5);
    expect(code('ERR_BINDING')).toBe(6);
    expect(code('ERR_DISK_BUSY')).toBe(7);
    expect(code('ERR_ABORTED')).toBe(130);
    expect(code('ERR_OUTPUT_EXISTS')).toBe(1);
    expect(code('ERR_INVALID_ARGUMENT')).toBe(2);
    expect(code('ERR_VMDK_SOMETHING_NEW')).toBe(5);
    expect(code('ERR_KMIP_SOMETHING_NEW')).toBe(4);
    expect(classify(new TypeError('x is undefined')).exitCode).toBe(70);
    expect(classify(Object.assign(new Error("ENOENT: no such file or directory, open '/x'"), { code: 'ENOENT', syscall: 'open' })).exitCode).toBe(1);
  });
  it('formats one line: what failed, why, what to do', () => {
    const err = new VmsealError('ERR_OUTPUT_EXISTS', 'the output out.vmdk exists.');
    // The hint depends on the command: only commands with --force suggest it.
    expect(formatError('cannot encrypt in.img', err, 'encrypt')).toBe(
      'vmseal: cannot encrypt in.img: the output out.vmdk exists. Choose another output name, or add --force to replace it.',
    );
    expect(formatError('cannot rekey d.vmdk', err, 'rekey')).not.toContain('--force');
    const multi = new VmsealError('ERR_KMS_UNAVAILABLE', 'no node answered:\n  a:1 refused\n  b:2 timed out');
    const line = formatError('cannot encrypt in.img', multi);
    expect(line.split('\n')).toHaveLength(1);
    expect(line).toContain('no node answered; a:1 refused; b:2 timed out.');
    const sys = Object.assign(new Error("ENOENT: no such file or directory, open '/nope/x'"), { code: 'ENOENT', syscall: 'open', path: '/nope/x' });
    expect(formatError('cannot encrypt /nope/x', sys)).toBe('vmseal: cannot encrypt /nope/x: no such file or directory: /nope/x. Check the path.');
  });
});

describe('passphrases', () => {
  it('chooses file, then --passphrase-env, then VMSEAL_PASSPHRASE, then the prompt', () => {
    expect(passphraseSource({ passphraseFile: 'f' }, {}, true)).toEqual({ kind: 'file', path: 'f' });
    expect(passphraseSource({ passphraseEnv: 'X' }, { VMSEAL_PASSPHRASE: 'p' }, true)).toEqual({ kind: 'env', name: 'X' });
    expect(passphraseSource({}, { VMSEAL_PASSPHRASE: 'p' }, true)).toEqual({ kind: 'env', name: 'VMSEAL_PASSPHRASE' });
    expect(passphraseSource({}, {}, true)).toEqual({ kind: 'prompt' });
    expect(passphraseSource({}, {}, false)).toEqual({ kind: 'none' });
    usage(() => passphraseSource({ passphraseFile: 'f', passphraseEnv: 'X' }, {}, true));
  });
  it('reads a file without its trailing newline, and refuses empty or huge files', async () => {
    const f = join(dir, 'pw');
    await writeFile(f, 'correct horse battery\r\n');
    expect(await readPassphrase({ purpose: 'p', passphraseFile: f, env: {} })).toBe('correct horse battery');
    await writeFile(f, '\n');
    await expect(readPassphrase({ purpose: 'p', passphraseFile: f, env: {} })).rejects.toThrow(/is empty/);
    await writeFile(f, Buffer.alloc(10_000, 0x41));
    await expect(readPassphrase({ purpose: 'p', passphraseFile: f, env: {} })).rejects.toThrow(/more than a passphrase/);
    await expect(readPassphrase({ purpose: 'p', passphraseFile: join(dir, 'missing'), env: {} })).rejects.toThrow(/cannot read --passphrase-file/);
  });
  it('reads a variable and enforces a minimum length without echoing the value', async () => {
    expect(await readPassphrase({ purpose: 'p', passphraseEnv: 'PW', env: { PW: 'long enough secret' } })).toBe('long enough secret');
    const err = await readPassphrase({ purpose: 'recovery passphrase', passphraseEnv: 'PW', env: { PW: 'short' }, minLength: 8 }).catch((e) => e);
    expect(err.message).toBe('the recovery passphrase is shorter than 8 characters');
    await expect(readPassphrase({ purpose: 'p', passphraseEnv: 'NOPE', env: {} })).rejects.toThrow('the environment variable NOPE is not set');
  });
  it('refuses to wait for a prompt when stdin is not a terminal', async () => {
    const input = new PassThrough();
    const err = await readPassphrase({ purpose: 'recovery passphrase', env: {}, io: { input, output: new PassThrough() } }).catch((e) => e);
    expect(err).toBeInstanceOf(CliError);
    expect(err.exitCode).toBe(2);
    expect(err.message).toContain('stdin is not a terminal');
  });
  it('prompts without echo: backspace edits, Enter ends, nothing typed is written out', async () => {
    const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: () => undefined });
    let written = '';
    const output = new Writable({
      write(chunk, _enc, cb) {
        written += String(chunk);
        cb();
      },
    });
    const p = promptHidden('Passphrase: ', { input, output });
    input.write('secrex');
    input.write('\u007ft');
    input.write('\r');
    expect(await p).toBe('secret');
    expect(written).toBe('Passphrase: \n');
  });
  it('asks twice for a new passphrase and refuses different answers', async () => {
    const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: () => undefined });
    const output = new PassThrough();
    const p = readPassphrase({ purpose: 'new recovery passphrase', confirm: true, env: {}, io: { input, output } });
    input.write('first one\r');
    await new Promise((r) => setImmediate(r));
    input.write('second one\r');
    await expect(p).rejects.toThrow('the two passphrases differ');
  });
  it('turns Ctrl-C at the prompt into an AbortError', async () => {
    const input = Object.assign(new PassThrough(), { isTTY: true, setRawMode: () => undefined });
    const p = promptHidden('P: ', { input, output: new PassThrough() });
    input.write('abc\u0003');
    const err = await p.catch((e) => e);
    expect(err.name).toBe('AbortError');
    expect(classify(err).exitCode).toBe(130);
  });
  it('refuses passphrases on argv and never echoes them', () => {
    for (const argv of [
      ['encrypt', 'a', 'b', '--passphrase', 'hunter22'],
      ['encrypt', 'a', 'b', '--passphrase=hunter22'],
      ['encrypt', 'a', 'b', '--recovery-passphrase=hunter22'],
      ['decrypt', 'a', 'b', '--password', 'hunter22'],
      ['keys', 'backup', 'f', '--backup-passphrase=hunter22'],
    ]) {
      const err = usage(() => rejectSecretsOnArgv(argv));
      expect(err.message).toContain('never takes passphrases from the command line');
      expect(err.message + (err.hint ?? '')).not.toContain('hunter22');
    }
    expect(() =>
      rejectSecretsOnArgv(['encrypt', 'a', 'b', '--recovery-passphrase', '--passphrase-file', 'f', '--passphrase-env=X', '--kms-key', 'k.pem']),
    ).not.toThrow();
    expect(() => rejectSecretsOnArgv(['info', '--', '--passphrase=x'])).not.toThrow();
  });
});

describe('batch runner', () => {
  it('runs every image, continues past failures, and reports bytes, time and reasons', async () => {
    const items = ['a', 'b', 'c'].map((n) => ({ input: `/in/${n}.vmdk`, output: `/out/${n}.vmdk` }));
    const lines: string[] = [];
    const outcome = await runBatch(
      items,
      async (item) => {
        if (item.input.includes('b')) throw new VmsealError('ERR_VMDK_FORMAT', 'bad magic in /in/b.vmdk');
        return { bytes: 1000 };
      },
      { onDone: (r, i, n) => lines.push(`${i + 1}/${n} ${r.ok}`) },
    );
    expect(outcome.interrupted).toBe(false);
    expect(outcome.results.map((r) => r.ok)).toEqual([true, false, true]);
    expect(outcome.results[0]!.bytes).toBe(1000);
    expect(outcome.results[1]!.error).toEqual({ code: 'ERR_VMDK_FORMAT', reason: 'bad magic in /in/b.vmdk', exitCode: 5 });
    expect(lines).toEqual(['1/3 true', '2/3 false', '3/3 true']);
    expect(batchExitCode(outcome)).toBe(1);
  });
  it('stops at an abort and marks the batch interrupted', async () => {
    const ac = new AbortController();
    const notRun: string[] = [];
    const items = ['a', 'b', 'c'].map((n) => ({ input: n, output: n }));
    const outcome = await runBatch(
      items,
      async (item) => {
        if (item.input === 'b') {
          ac.abort();
          throw Object.assign(new Error('stopped'), { name: 'AbortError' });
        }
        return { bytes: 1 };
      },
      { signal: ac.signal, onNotRun: (item) => notRun.push(item.input) },
    );
    expect(outcome.interrupted).toBe(true);
    // The image the abort stopped is not run, like the ones after it; only a's result remains.
    expect(outcome.results.map((r) => r.input)).toEqual(['a']);
    expect(notRun).toEqual(['b']);
    expect(batchExitCode(outcome)).toBe(130);
  });
  it('runs `jobs` images at once, reports them in input order, and on abort counts every one in flight as not run', async () => {
    const items = ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'].map((n) => ({ input: n, output: n }));
    const ac = new AbortController();
    const release = new Map<string, () => void>();
    let running = 0;
    let most = 0;
    const order: string[] = [];
    const run = runBatch(
      items,
      (item, signal) =>
        new Promise((resolve, reject) => {
          running++;
          most = Math.max(most, running);
          const end = (): void => void running--;
          signal?.addEventListener('abort', () => (end(), reject(Object.assign(new Error('stopped'), { name: 'AbortError' }))));
          release.set(item.input, () => (end(), resolve({ bytes: item.input.charCodeAt(0) })));
        }),
      {
        jobs: 3,
        signal: ac.signal,
        onDone: (r) => order.push(`${r.input} ok`),
        onNotRun: (item) => order.push(`${item.input} not run`),
      },
    );
    const tick = (): Promise<void> => new Promise((r) => setImmediate(r));
    await tick();
    expect([...release.keys()]).toEqual(['a', 'b', 'c']);
    // b and c finish before a: nothing is reported until a is.
    release.get('c')!();
    release.get('b')!();
    await tick();
    expect(order).toEqual([]);
    expect([...release.keys()]).toEqual(['a', 'b', 'c', 'd', 'e']);
    release.get('a')!();
    await tick();
    expect(order).toEqual(['a ok', 'b ok', 'c ok']);
    // d finishes and g takes its place; the abort stops e, f and g in flight, and h never starts.
    release.get('d')!();
    await tick();
    ac.abort();
    const outcome = await run;
    expect(most).toBe(3);
    expect([...release.keys()]).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g']);
    expect(order).toEqual(['a ok', 'b ok', 'c ok', 'd ok', 'e not run', 'f not run', 'g not run']);
    expect(outcome.results.map((r) => r.input)).toEqual(['a', 'b', 'c', 'd']);
    expect(outcome.interrupted).toBe(true);
  });
  it('gives the images of a batch started together one key session: one local keystore provider', async () => {
    const ctx = makeCtx({
      output: new Output({ quiet: true }),
      signal: new AbortController().signal,
      env: {},
      io: { input: new PassThrough(), output: new PassThrough() },
    });
    const keys = new KeySession(ctx, { home: join(dir, 'session-home') });
    try {
      const locals = await Promise.all([keys.local(), keys.local(), keys.local()]);
      expect(new Set(locals).size).toBe(1);
    } finally {
      await keys.close();
    }
  });
  it('lists the images of a directory, one per disk (extent files of a flat disk are not images)', async () => {
    const d = join(dir, 'images');
    await rm(d, { recursive: true, force: true });
    await import('node:fs/promises').then((fs) => fs.mkdir(d));
    await writeFile(
      join(d, 'flat.vmdk'),
      '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "flat-flat.vmdk" 0\n',
    );
    await writeFile(join(d, 'flat-flat.vmdk'), Buffer.alloc(1024 * 1024));
    await writeFile(join(d, 'raw.img'), Buffer.alloc(512));
    await writeFile(join(d, 'sparse.vmdk'), Buffer.concat([Buffer.from('KDMV'), Buffer.alloc(508)]));
    await writeFile(join(d, 'notes.txt'), 'x');
    await writeFile(join(d, '.tmp-out.vmdk'), 'x');
    expect(await listImagesInDirectory(d)).toEqual([join(d, 'flat.vmdk'), join(d, 'raw.img'), join(d, 'sparse.vmdk')]);
    expect(extentFileNames('RW 4192256 SPARSE "a-s001.vmdk"\r\nRW 8 FLAT "b c.vmdk" 0\nddb.x = "1"')).toEqual(['a-s001.vmdk', 'b c.vmdk']);
  });
  it('reads list files and names outputs, refusing collisions', async () => {
    const list = join(dir, 'list.txt');
    await writeFile(list, '# images\n/a/x.img\n\n  /b/y.vmdk  \n');
    expect(await readImageList(list)).toEqual(['/a/x.img', '/b/y.vmdk']);
    expect(outputNameFor('/a/x.img', 'monolithicSparse')).toBe('x.vmdk');
    expect(outputNameFor('/a/x.vmdk', 'raw')).toBe('x.img');
    expect(planBatch(['/a/x.img', '/b/y.vmdk'], '/o', 'raw')).toEqual([
      { input: '/a/x.img', output: '/o/x.img' },
      { input: '/b/y.vmdk', output: '/o/y.img' },
    ]);
    expect(() => planBatch(['/a/x.img', '/b/x.vmdk'], '/o', 'raw')).toThrow('/b/x.vmdk and /a/x.img would both be written to /o/x.img');
  });
});

describe('sample disk', () => {
  it('is deterministic, sparse, and starts with an MBR partition table', async () => {
    const a = join(dir, 'a.img');
    const b = join(dir, 'b.img');
    const info = await writeSampleDisk(a, 16 * 1024 * 1024);
    await writeSampleDisk(b, 16 * 1024 * 1024);
    expect(await sha256File(a)).toBe(await sha256File(b));
    expect((await stat(a)).size).toBe(16 * 1024 * 1024);
    expect(info.textFiles + info.binaryFiles).toBeGreaterThan(0);
    expect(info.dataBytes).toBeGreaterThan(1024 * 1024);
    expect(info.dataBytes).toBeLessThan(16 * 1024 * 1024);
    const bytes = await readFile(a);
    expect(bytes[510]).toBe(0x55);
    expect(bytes[511]).toBe(0xaa);
    expect(bytes[446 + 4]).toBe(0x83);
    expect(bytes.readUInt32LE(446 + 8)).toBe(2048);
    expect(bytes.subarray(512, 2048 * 512).every((x) => x === 0)).toBe(true);
    expect(bytes.subarray(2048 * 512, 2048 * 512 + 14).toString('latin1')).toBe('VMSEAL-DEMO-FS');
    expect(createHash('sha256').update(bytes).digest('hex')).toBe(await sha256File(a));
    await expect(writeSampleDisk(a, 5 * 1024 * 1024 + 1)).rejects.toThrow(RangeError);
  });
});

describe('output modes', () => {
  function sink(): { stream: Writable & { isTTY?: boolean }; text: () => string } {
    let text = '';
    const stream = new Writable({
      write(chunk, _e, cb) {
        text += String(chunk);
        cb();
      },
    });
    return { stream, text: () => text };
  }
  it('--json writes exactly one object on stdout and no human lines', () => {
    const out = sink();
    const err = sink();
    const o = new Output({ json: true }, { stdout: out.stream, stderr: err.stream });
    o.line('human');
    o.result({ ok: true, n: 1n, key: Buffer.from('secret') });
    o.result({ ok: false });
    expect(out.text()).toBe('{"ok":true,"n":1}\n');
  });
  it('--quiet prints nothing but errors', () => {
    const out = sink();
    const err = sink();
    const o = new Output({ quiet: true }, { stdout: out.stream, stderr: err.stream });
    o.line('human');
    o.note('note');
    o.error('vmseal: x: y.');
    expect(out.text()).toBe('');
    expect(err.text()).toBe('vmseal: x: y.\n');
  });
  it('shows no progress bar when stderr is not a terminal', () => {
    const err = sink();
    const o = new Output({}, { stdout: sink().stream, stderr: err.stream });
    const bar = o.progress('encrypt');
    bar.update({ bytesDone: 5, bytesTotal: 10 });
    bar.stop();
    expect(err.text()).toBe('');
  });
  it('keeps size, rate and ETA on a 60-column terminal by shortening the bar', () => {
    for (const columns of [60, 80, 200]) {
      const { format, barsize } = progressLayout('encrypt', columns);
      // The widest values the fields can take (sizes below 1 PiB, a 2 TiB disk at a slow rate).
      const line = format
        .replace('{bar}', '#'.repeat(barsize))
        .replace('{percentage}', '100')
        .replace('{doneText}', '99.99 GiB')
        .replace('{totalText}', '99.99 TiB')
        .replace('{rateText}', '9999 MB/s')
        .replace('{etaText}', '999h59m');
      expect(line.length, `${columns}: ${line}`).toBeLessThan(columns);
      expect(line).toContain('99.99 GiB');
      expect(line).toContain('9999 MB/s');
      expect(line).toContain('999h59m');
    }
    expect(progressLayout('encrypt', 200).barsize).toBe(40);
    // Drawn by cli-progress on a 60-column terminal: nothing of the text is cut off.
    let drawn = '';
    const tty = Object.assign(
      new Writable({
        write(c, _e, cb) {
          drawn += String(c);
          cb();
        },
      }),
      {
        isTTY: true,
        columns: 60,
        cursorTo: () => true,
        clearLine: () => true,
        moveCursor: () => true,
      },
    );
    const o = new Output({ progress: true }, { stdout: sink().stream, stderr: tty });
    const bar = o.progress('encrypt');
    bar.update({ bytesDone: 3 * 1024 ** 3, bytesTotal: 2 * 1024 ** 4, rate: 123.4e6, etaSeconds: 17_000 });
    bar.stop();
    expect(drawn).toContain('3.00 GiB');
    expect(drawn).toContain('2.00 TiB');
    expect(drawn).toContain('123 MB/s');
    expect(drawn).toContain('[');
    expect(drawn).toMatch(/ETA 4h43m/);
  });
  it('notes never carry the error prefix', () => {
    const err = sink();
    const o = new Output({}, { stdout: sink().stream, stderr: err.stream });
    o.note('vmseal: created a keystore');
    expect(err.text()).toBe('created a keystore\n');
  });
});

describe('key options from the environment', () => {
  it('options win over variables; variables fill the gaps; the home is always explicit', () => {
    expect(resolveHome('/a', { VMSEAL_HOME: '/b' })).toBe('/a');
    expect(resolveHome(undefined, { VMSEAL_HOME: '/b' })).toBe('/b');
    expect(resolveHome(undefined, {})).toMatch(/\.vmseal$/);
    const o = withEnvDefaults({ kms: 'k1:1' }, { VMSEAL_KMS: 'k2:2', VMSEAL_KMS_CA: 'ca.pem', VMSEAL_KMS_ID: 'prod', VMSEAL_KMS_CERT: '' });
    expect(o).toMatchObject({ kms: 'k1:1', kmsCa: 'ca.pem', kmsId: 'prod' });
    expect(o.kmsCert).toBeUndefined();
  });
});
