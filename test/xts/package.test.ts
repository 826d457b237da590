// The package as users get it: the built entry points (ESM and CJS) load the addon in a child
// process; the addon works in worker threads (one instance per thread, several at once) and
// survives threads and processes that end while async work is running; a missing binary gives
// ERR_NATIVE_NOT_FOUND with what to do.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { findPackageRoot, loadAddon } from '../../src/xts/native.js';

const root = findPackageRoot(fileURLToPath(new URL('.', import.meta.url)))!;
// The built package: dist/ of this checkout (npm test builds it first), or another build named by
// VMSEAL_TEST_DIST (a directory holding index.js and index.cjs).
const dist = resolve(process.env.VMSEAL_TEST_DIST ?? join(root, 'dist'));
const hasDist = existsSync(join(dist, 'index.js')) && existsSync(join(dist, 'index.cjs'));
// The binary the package would load (or the one VMSEAL_NATIVE_PATH forces).
const addonPath = process.env.VMSEAL_NATIVE_PATH
  ? resolve(process.env.VMSEAL_NATIVE_PATH)
  : (createRequire(import.meta.url)('node-gyp-build') as { resolve(dir: string): string }).resolve(root);

function runNode(args: string[], env: Record<string, string | undefined> = {}): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, args, { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

// One script for both module systems: encrypt a unit and compare with node:crypto.
const probe = (load: string): string => `
  ${load}
  const { createCipheriv, randomBytes } = require('node:crypto');
  const key = randomBytes(64), data = randomBytes(4096);
  const cipher = new vm.XtsCipher(key);
  const out = cipher.encrypt(data, { unitSize: 512, firstUnit: 9n });
  const iv = Buffer.alloc(16); iv.writeBigUInt64LE(9n);
  const ref = createCipheriv('aes-256-xts', key, iv).update(data.subarray(0, 512));
  if (!ref.equals(Buffer.from(out.subarray(0, 512)))) throw new Error('mismatch');
  cipher.encryptAsync(data, { unitSize: 512, firstUnit: 9n }).then((o) => {
    if (!Buffer.from(o).equals(Buffer.from(out))) throw new Error('async mismatch');
    console.log(JSON.stringify({ ok: true, impl: vm.xtsInfo().implementation, disposed: (cipher.dispose(), cipher.disposed) }));
  });
`;

describe.skipIf(!hasDist)(`the built package (${dist})`, () => {
  it('is a current build (run `npm run build` if this fails)', () => {
    const r = runNode(['-e', `const vm = require(${JSON.stringify(join(dist, 'index.cjs'))}); console.log(typeof vm.XtsCipher, typeof vm.xtsInfo)`]);
    expect(r.stdout.trim(), `${dist} does not export XtsCipher/xtsInfo: stale build? stderr: ${r.stderr}`).toBe('function function');
  });

  it('loads through the ESM entry point in a child process', () => {
    const script = `import { createRequire } from 'node:module'; const require = createRequire(import.meta.url);
      const vm = await import(${JSON.stringify(new URL(`file://${join(dist, 'index.js')}`).href)}); ${probe('')}`;
    const r = runNode(['--input-type=module', '-e', script]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, disposed: true });
    expect(r.status).toBe(0);
  });

  it('loads through the CJS entry point in a child process', () => {
    const r = runNode(['-e', probe(`const vm = require(${JSON.stringify(join(dist, 'index.cjs'))});`)]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, disposed: true });
    expect(r.status).toBe(0);
  });

  it('loads in worker threads through the package', async () => {
    const code = `const { parentPort } = require('node:worker_threads');
      const vm = require(${JSON.stringify(join(dist, 'index.cjs'))});
      const c = new vm.XtsCipher(Buffer.alloc(64).fill(1, 32));
      c.encryptAsync(Buffer.alloc(1 << 20), { unitSize: 4096 }).then((o) => parentPort.postMessage(Buffer.from(o).subarray(0, 32).toString('hex')));`;
    const results = await Promise.all([0, 1].map(() => runWorker(code)));
    expect(results[0]).toBe(results[1]);
    expect(results[0]).toMatch(/^[0-9a-f]{64}$/);
  });
});

function runWorker(code: string, onlineAction?: (w: Worker) => void): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const worker = new Worker(code, { eval: true });
    let message: unknown;
    worker.on('message', (m) => (message = m));
    worker.on('error', reject);
    worker.on('online', () => onlineAction?.(worker));
    worker.on('exit', (exitCode) => (exitCode === 0 || onlineAction ? resolvePromise(message) : reject(new Error(`worker exit ${exitCode}`))));
  });
}

describe('the native addon in threads and at exit', () => {
  const load = `const addon = require(${JSON.stringify(addonPath)});`;

  it('works in several worker threads at once, each with its own instance and pool', async () => {
    const code = `${load}
      const { parentPort } = require('node:worker_threads');
      const key = Buffer.alloc(64); key[0] = 1;
      const c = addon.createCipher(key);
      addon.setThreads(3);
      const data = Buffer.alloc(4 << 20, 7), out = Buffer.alloc(data.length);
      addon.encryptAsync(c, data, 4096, 100, out, 3).then(() => {
        const sync = Buffer.alloc(data.length); addon.encrypt(c, data, 4096, 100, sync);
        parentPort.postMessage({ same: sync.equals(out), threads: addon.getThreads(), head: out.subarray(0, 16).toString('hex') });
      });`;
    const results = (await Promise.all([0, 1, 2].map(() => runWorker(code)))) as Array<{ same: boolean; threads: number; head: string }>;
    for (const r of results) expect(r).toEqual({ same: true, threads: 3, head: results[0]!.head });
    // The main thread's pool was not resized by the workers.
    const main = loadAddon({ path: addonPath });
    expect(main.getThreads()).not.toBe(0);
  });

  it('survives workers terminated or exiting while async work runs', async () => {
    const code = `${load}
      const { parentPort } = require('node:worker_threads');
      const c = addon.createCipher(Buffer.alloc(64).fill(2, 32));
      const data = Buffer.alloc(32 << 20);
      for (let i = 0; i < 4; i++) addon.encryptAsync(c, data, 512, 0, data, 2);
      parentPort.postMessage('started');
      if (process.env.EXIT_FROM_INSIDE) process.exit(0);`;
    for (let round = 0; round < 3; round++) {
      await runWorker(code, (w) => setTimeout(() => void w.terminate(), round * 5));
    }
    const exiting = new Worker(code, { eval: true, env: { ...process.env, EXIT_FROM_INSIDE: '1' } });
    const exitCode = await new Promise((r) => exiting.on('exit', r));
    expect(exitCode).toBe(0);
  });

  it('lets a process exit cleanly with async work pending, by process.exit() and by the end of the event loop', () => {
    const start = `${load}
      const c = addon.createCipher(Buffer.alloc(64).fill(3, 32));
      const data = Buffer.alloc(64 << 20);
      const p = addon.encryptAsync(c, data, 4096, 0, data);`;
    const exitNow = runNode(['-e', `${start}; process.exit(0);`]);
    expect(exitNow.stderr).toBe('');
    expect(exitNow.status).toBe(0);
    const drain = runNode(['-e', `${start}; addon.dispose(c); p.then(() => console.log('done'));`]);
    expect(drain.stderr).toBe('');
    expect(drain.stdout.trim()).toBe('done');
    expect(drain.status).toBe(0);
  });

  it('keeps the key schedule alive for async work when the cipher handle is garbage-collected', () => {
    const r = runNode([
      '--expose-gc',
      '-e',
      `${load}
      const key = Buffer.alloc(64).fill(4, 32), data = Buffer.alloc(32 << 20, 9), sync = Buffer.alloc(data.length), out = Buffer.alloc(data.length);
      let c = addon.createCipher(key);
      addon.encrypt(c, data, 4096, 0, sync);
      const p = addon.encryptAsync(c, data, 4096, 0, out, 2);
      c = null;
      for (let i = 0; i < 5; i++) gc();
      p.then(() => { gc(); console.log(out.equals(sync)); });`,
    ]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('true');
  });

  it('loads twice in one process through different paths (two instances)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmseal-addon-'));
    try {
      const copy = join(dir, 'copy.node');
      copyFileSync(addonPath, copy);
      const r = runNode([
        '-e',
        `const a = require(${JSON.stringify(addonPath)}), b = require(${JSON.stringify(copy)});
        const key = Buffer.alloc(32).fill(5, 16), d = Buffer.alloc(512), x = Buffer.alloc(512), y = Buffer.alloc(512);
        a.encrypt(a.createCipher(key), d, 512, 1, x); b.encrypt(b.createCipher(key), d, 512, 1, y);
        let crossed = 'none'; try { a.encrypt(b.createCipher(key), d, 512, 1, x); crossed = 'accepted'; } catch (e) { crossed = e.code; }
        console.log(x.equals(y), crossed);`,
      ]);
      expect(r.stderr).toBe('');
      // A handle of one instance is still a valid handle for the other (same type tag, same layout).
      expect(r.stdout.trim()).toMatch(/^true (accepted|ERR_INVALID_ARG_TYPE)$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('load errors', () => {
  it('names platform, ABI and what to run when no binary exists', () => {
    const dir = mkdtempSync(join(tmpdir(), 'vmseal-nobuild-'));
    try {
      let error: (Error & { code?: string }) | undefined;
      try {
        loadAddon({ root: dir });
      } catch (err) {
        error = err as Error & { code?: string };
      }
      expect(error?.code).toBe('ERR_NATIVE_NOT_FOUND');
      expect(error?.message).toContain(
        `platform ${process.platform}, arch ${process.arch}, Node ${process.versions.node} (ABI ${process.versions.modules}, N-API ${process.versions.napi})`,
      );
      expect(error?.message).toContain(`no build in ${join(dir, 'prebuilds')} or ${join(dir, 'build', 'Release')}`);
      expect(error?.message).toContain('npm rebuild vmseal');
      expect(error?.message).toContain('npm run build:native');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('reports a VMSEAL_NATIVE_PATH that does not load', () => {
    expect(() => loadAddon({ path: '/nonexistent/vmseal_xts.node' })).toThrow(
      expect.objectContaining({
        code: 'ERR_NATIVE_NOT_FOUND',
        message: expect.stringContaining('VMSEAL_NATIVE_PATH=/nonexistent/vmseal_xts.node did not load'),
      }),
    );
  });
});
