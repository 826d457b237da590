// The CLI's V8 code cache (src/cli/code-cache.ts): the built CLI, copied into a temp folder and run
// through bin/vmseal.js (VMSEAL_CLI_ENTRY), writes one cache per command after a successful run,
// takes it on the next run, and never runs the code of another build nor fails because of a cache;
// a batch's worker threads keep theirs (batch-worker.js.cache) the same way.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { cacheFileFor, cacheKey, readCache, workerSourceWithCodeCache, writeCache } from '../../src/cli/code-cache.js';
import { cleanEnv, vmseal } from './run-cli.js';

const DIST = fileURLToPath(new URL('../../dist/cli/', import.meta.url));
const NATIVE = fileURLToPath(new URL('../../build/Release/vmseal_xts.node', import.meta.url));

let dir: string;
let cli: string;
let main: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-code-cache-'));
  cli = join(dir, 'cli');
  mkdirSync(cli);
  for (const f of ['main.js', 'code-cache.js', 'package.json']) copyFileSync(join(DIST, f), join(cli, f));
  main = join(cli, 'main.js');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const run = (args: string[]) => vmseal(args, cleanEnv({ VMSEAL_CLI_ENTRY: main, VMSEAL_HOME: join(dir, 'home') }));
const caches = () => readdirSync(cli).filter((f) => f.endsWith('.cache') || f.includes('.tmp-'));

describe('cache files', () => {
  it('are named by the command, and by nothing else of the arguments', () => {
    expect(cacheFileFor('/d/main.js', ['--version'])).toBe('/d/main.js.vmseal.cache');
    expect(cacheFileFor('/d/main.js', [])).toBe('/d/main.js.vmseal.cache');
    expect(cacheFileFor('/d/main.js', ['--json', 'encrypt', '/secret/in.img', 'out.vmdk'])).toBe('/d/main.js.encrypt.cache');
    expect(cacheFileFor('/d/main.js', ['/images/disk.img'])).toBe('/d/main.js.other.cache');
    expect(cacheFileFor('/d/main.js', ['../x'])).toBe('/d/main.js.other.cache');
  });

  it('hold V8 data behind a header naming the script; another header reads as no cache', () => {
    writeFileSync(main.replace('main.js', 's.js'), 'module.exports = 1;\n');
    const script = main.replace('main.js', 's.js');
    const key = cacheKey(script);
    expect(key).toMatch(/^vmseal-code-cache 1 \d+ [\d.]+ \d+$/);
    writeCache(`${script}.cache`, key, Buffer.from('v8 bytes'));
    expect(readCache(`${script}.cache`, key)?.toString()).toBe('v8 bytes');
    expect(readCache(`${script}.cache`, key.replace(/ \d+$/, ' 1'))).toBeUndefined();
    expect(readCache(`${script}.missing`, key)).toBeUndefined();
    expect(readdirSync(cli).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });
});

describe('the build', () => {
  it('is CommonJS and ASCII only (V8 keeps one-byte source; tsup.config.ts)', () => {
    expect(JSON.parse(readFileSync(join(DIST, 'package.json'), 'utf8'))).toEqual({ type: 'commonjs' });
    for (const f of ['main.js', 'batch-worker.js', 'batch-worker-start.js']) {
      const bytes = readFileSync(join(DIST, f));
      expect(
        bytes.findIndex((b) => b > 0x7f),
        f,
      ).toBe(-1);
    }
  });
});

describe('the CLI with its code cache', () => {
  it('writes the cache of a command after its first successful run and takes it on the next', async () => {
    const first = await run(['--version']);
    expect(first.stdout.trim()).toBe('0.1.0');
    expect(caches()).toEqual(['main.js.vmseal.cache']);
    const made = statSync(join(cli, 'main.js.vmseal.cache'));
    const second = await run(['--version']);
    expect(second.stdout.trim()).toBe('0.1.0');
    // Not rewritten (a rejected cache would be replaced by a new file): V8 took it.
    expect(statSync(join(cli, 'main.js.vmseal.cache')).ino).toBe(made.ino);
    expect(caches()).toEqual(['main.js.vmseal.cache']);
  });

  it('does not run the code of another build of the same length', async () => {
    expect((await run(['--version'])).code).toBe(0);
    const text = readFileSync(main, 'utf8');
    // program.ts's version string (esbuild may rename the constant): edited in place, same length.
    const at = text.search(/VERSION\d* = "0\.1\.0";/);
    expect(at).toBeGreaterThan(0);
    writeFileSync(main, text.slice(0, at) + text.slice(at).replace('"0.1.0"', '"9.9.9"'));
    const r = await run(['--version']);
    expect(r.stdout.trim()).toBe('9.9.9');
    expect((await run(['--version'])).stdout.trim()).toBe('9.9.9');
  });

  it('runs without a cache that V8 rejects, and replaces it', async () => {
    expect((await run(['--version'])).code).toBe(0);
    const file = join(cli, 'main.js.vmseal.cache');
    const bytes = readFileSync(file);
    const header = bytes.indexOf(0x0a) + 1;
    writeFileSync(file, Buffer.concat([bytes.subarray(0, header), Buffer.alloc(bytes.length - header, 0x5a)]));
    const before = statSync(file).ino;
    const r = await run(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('0.1.0');
    expect(statSync(file).ino).not.toBe(before);
    expect(
      readFileSync(file)
        .subarray(header)
        .equals(Buffer.alloc(bytes.length - header, 0x5a)),
    ).toBe(false);
  });

  it('runs when the cache cannot be read or written', async () => {
    mkdirSync(join(cli, 'main.js.vmseal.cache')); // in the file's place: unreadable, not replaceable
    const r = await run(['--version']);
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe('0.1.0');
    expect(statSync(join(cli, 'main.js.vmseal.cache')).isDirectory()).toBe(true);
    expect(readdirSync(cli).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('writes nothing for a run that fails (a mistyped command, a file name in its place)', async () => {
    expect((await run(['encrpyt', 'in.img'])).code).toBe(2);
    expect((await run([join(dir, 'disk.img')])).code).toBe(2);
    expect(caches()).toEqual([]);
  });

  it('is bypassed by VMSEAL_DEBUG=1, whose stack traces name the TypeScript source (source maps)', async () => {
    // A stand-in for the CLI that fails at its second line, built as tsup builds the CLI (CommonJS, source map).
    writeFileSync(join(dir, 'boom.ts'), "export function boom(): never {\n  throw new Error('boom');\n}\nboom();\n");
    await build({ entryPoints: [join(dir, 'boom.ts')], outfile: main, format: 'cjs', platform: 'node', sourcemap: true, bundle: true, logLevel: 'silent' });
    const plain = await run([]);
    expect(plain.stderr).toMatch(/at boom \(.*main\.js:\d+:\d+\)/);
    const debug = await vmseal([], cleanEnv({ VMSEAL_CLI_ENTRY: main, VMSEAL_DEBUG: '1' }));
    expect(debug.stderr).toMatch(/at boom \(.*boom\.ts:2:\d+\)/);
    expect(caches()).toEqual([]);
  });

  it('is neither read nor written with VMSEAL_NO_CODE_CACHE=1', async () => {
    const r = await vmseal(['--version'], cleanEnv({ VMSEAL_CLI_ENTRY: main, VMSEAL_NO_CODE_CACHE: '1' }));
    expect(r.stdout.trim()).toBe('0.1.0');
    expect(caches()).toEqual([]);
    expect(existsSync(join(cli, 'main.js.vmseal.cache'))).toBe(false);
  });
});

describe("a batch's worker threads with their code cache", () => {
  /**
   * A batch of `n` 4 MiB raw images converted with --jobs 4 (the main thread and one worker of two).
   * A worker still loading when the main thread has converted every image is stopped, not waited
   * for, and writes no cache: the batches here are long enough for the worker to take images, and
   * it starts while the CLI loads, as in a real build (batch-worker-start.js beside main.js).
   */
  async function batch(n: number, env: Record<string, string> = {}) {
    for (const f of ['batch-worker.js', 'batch-worker-start.js']) if (!existsSync(join(cli, f))) copyFileSync(join(DIST, f), join(cli, f));
    const input = join(dir, 'in');
    mkdirSync(input, { recursive: true });
    for (let i = 0; i < n; i++) if (!existsSync(join(input, `d${i}.img`))) writeFileSync(join(input, `d${i}.img`), Buffer.alloc(4 << 20, i + 1));
    const out = join(dir, `out-${Math.random().toString(36).slice(2)}`);
    const r = await vmseal(
      ['convert', input, out, '--subformat', 'monolithicSparse', '--jobs', '4', '--json'],
      cleanEnv({ VMSEAL_CLI_ENTRY: main, VMSEAL_HOME: join(dir, 'home'), VMSEAL_NATIVE_PATH: NATIVE, ...env }),
    );
    expect(r.code, r.stderr).toBe(0);
    const result = JSON.parse(r.stdout) as { workers: number; converted: number };
    expect(result).toMatchObject({ workers: 1, converted: n });
  }

  it('write batch-worker.js.cache when the batch succeeds, and take it in the next batch', async () => {
    await batch(16);
    expect(caches().sort()).toEqual(['batch-worker.js.cache', 'main.js.convert-batch.cache']);
    const file = join(cli, 'batch-worker.js.cache');
    expect(readCache(file, cacheKey(join(cli, 'batch-worker.js')))).toBeDefined();
    const made = statSync(file).ino;
    const mainMade = statSync(join(cli, 'main.js.convert-batch.cache')).ino;
    await batch(16);
    // Neither rewritten (a missing or rejected cache is replaced by a new file): the worker and the
    // main thread took theirs — V8 rejects a cache made under other flags (src/cli/v8-tiering.ts).
    expect(statSync(file).ino).toBe(made);
    expect(statSync(join(cli, 'main.js.convert-batch.cache')).ino).toBe(mainMade);
    expect(caches().sort()).toEqual(['batch-worker.js.cache', 'main.js.convert-batch.cache']);
  });

  it('run without a worker cache that V8 rejects, and replace it', async () => {
    await batch(16);
    const file = join(cli, 'batch-worker.js.cache');
    const bytes = readFileSync(file);
    const header = bytes.indexOf(0x0a) + 1;
    writeFileSync(file, Buffer.concat([bytes.subarray(0, header), Buffer.alloc(bytes.length - header, 0x5a)]));
    const before = statSync(file).ino;
    await batch(16);
    expect(statSync(file).ino).not.toBe(before);
    expect(readCache(file, cacheKey(join(cli, 'batch-worker.js')))?.equals(Buffer.alloc(bytes.length - header, 0x5a))).toBe(false);
  });

  it('are neither read nor written with VMSEAL_NO_CODE_CACHE=1', async () => {
    await batch(6, { VMSEAL_NO_CODE_CACHE: '1' });
    expect(caches()).toEqual([]);
  });

  it('is the worker source only where the loader is beside the script and caches are wanted', () => {
    const worker = join(cli, 'batch-worker.js');
    const source = workerSourceWithCodeCache(worker);
    expect(source).toContain(JSON.stringify(join(cli, 'code-cache.js')));
    expect(source).toContain(JSON.stringify(`${worker}.cache`));
    expect(workerSourceWithCodeCache(join(dir, 'elsewhere', 'batch-worker.js'))).toBeUndefined();
  });
});
