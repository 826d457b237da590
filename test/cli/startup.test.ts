// Start-up cost of the CLI: a command loads what it uses. `vmseal encrypt` with local keys, run from
// a script (no terminal), must not load the TLS stack (KMIP and serve only), the KMIP client nor
// the progress bar library (terminals only) — each costs start-up time that short jobs pay in full.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, cleanEnv } from './run-cli.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-startup-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Run the CLI with a preload that records, at exit, the built-in modules and CommonJS files it
 * loaded, and V8's coverage of its run: the CLI is one CommonJS bundle (tsup.config.ts) in which
 * esbuild wraps each source module in an initialiser named by the module's path
 * (`"src/cli/commands/encrypt.ts"() {…}`), called when the module is first imported; `modules` are
 * the paths of the initialisers that ran. The code cache is off: it changes how, not what, the CLI loads.
 */
function runRecording(args: string[]): Promise<{ code: number | null; stderr: string; builtins: string[]; files: string[]; modules: string[] }> {
  const preload = join(dir, 'record.cjs');
  const out = join(dir, 'loaded.json');
  const coverage = mkdtempSync(join(dir, 'coverage-')); // this run's only
  writeFileSync(
    preload,
    `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify({
      builtins: process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)),
      files: Object.keys(require.cache),
    })));\n`,
  );
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--require', preload, BIN, ...args], {
      env: cleanEnv({ VMSEAL_HOME: join(dir, 'home'), NODE_V8_COVERAGE: coverage, VMSEAL_NO_CODE_CACHE: '1' }),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const loaded = JSON.parse(readFileSync(out, 'utf8')) as { builtins: string[]; files: string[] };
      resolve({ code, stderr, ...loaded, modules: modulesRun(coverage) });
    });
  });
}

/** The source modules whose initialiser ran in the CLI's bundle (dist/cli/main.js), from V8's coverage files. */
function modulesRun(coverage: string): string[] {
  const names: string[] = [];
  for (const f of readdirSync(coverage)) {
    const { result } = JSON.parse(readFileSync(join(coverage, f), 'utf8')) as {
      result: { url: string; functions: { functionName: string; ranges: { count: number }[] }[] }[];
    };
    for (const script of result) {
      if (!script.url.startsWith('file:') || !fileURLToPath(script.url).endsWith(join('dist', 'cli', 'main.js'))) continue;
      for (const fn of script.functions) if (/\.(ts|js)$/.test(fn.functionName) && fn.ranges[0]!.count > 0) names.push(fn.functionName);
    }
  }
  return names;
}

describe('CLI start-up', () => {
  it('encrypt with the local key provider loads neither TLS nor the progress bar', async () => {
    const src = join(dir, 'in.img');
    writeFileSync(src, Buffer.alloc(1 << 20, 0x5a));
    const r = await runRecording(['encrypt', src, join(dir, 'out.vmdk')]);
    expect(r.stderr).not.toMatch(/error/i);
    expect(r.code).toBe(0);
    expect(r.builtins).toContain('crypto'); // the recording works: a module the job needs is listed
    expect(r.builtins).not.toContain('tls');
    expect(r.builtins).not.toContain('_tls_wrap');
    expect(r.files.filter((f) => f.includes('cli-progress'))).toEqual([]);
  });

  it('encrypt with the local key provider does not load the KMIP client', async () => {
    const src = join(dir, 'in.img');
    writeFileSync(src, Buffer.alloc(1 << 20, 0x5a));
    const r = await runRecording(['encrypt', src, join(dir, 'out.vmdk')]);
    expect(r.code).toBe(0);
    const sources = r.modules;
    expect(sources.some((s) => s.endsWith('pipeline/copy.ts'))).toBe(true); // the recording works
    expect(sources.filter((s) => s.includes('/kmip/'))).toEqual([]);
  });

  it('--version loads no TLS either', async () => {
    const r = await runRecording(['--version']);
    expect(r.code).toBe(0);
    expect(r.builtins).not.toContain('tls');
  });

  it('--version loads only the grammar: no command, no disk layer, no native addon', async () => {
    const r = await runRecording(['--version']);
    expect(r.code).toBe(0);
    const sources = r.modules;
    expect(sources.some((s) => s.endsWith('cli/parse.ts'))).toBe(true); // the recording works
    // Below the CLI, only the modules without heavy imports that the grammar needs (src/cli/program.ts).
    const leaves = [
      'errors.ts',
      'disk/params.ts',
      'disk/errors.ts',
      'disk/data-check.ts',
      'util/hkdf.ts', // data-check's key derivation: node:crypto only
      'keys/dek.ts',
      'keys/errors.ts',
      'keys/kdf-limits.ts',
      'xts/constants.ts',
      'vmdk/subformats.ts',
      'pipeline/chunk-limits.ts',
    ];
    const below = sources.filter((s) => /(^|\/)src\//.test(s) && !s.includes('/cli/') && !leaves.some((l) => s.endsWith(`src/${l}`)));
    expect(below.map((s) => s.replace(/^(.*\/)?src\//, ''))).toEqual([]);
    expect(sources.filter((s) => s.includes('/cli/commands/'))).toEqual([]);
    expect(r.files.filter((f) => f.endsWith('.node'))).toEqual([]);
    // child_process too: commander loads it for executable subcommands, which vmseal has none of (tsup.config.ts).
    for (const heavy of ['zlib', 'tls', 'child_process']) expect(r.builtins).not.toContain(heavy);
  });

  it('info and backup create load their own path only: no serve, vm, kmip, NBD or copy pipeline', async () => {
    const img = join(dir, 'in.img');
    writeFileSync(img, Buffer.alloc(1 << 20, 0x5a));
    const disk = join(dir, 'disk.vmdk');
    const repo = join(dir, 'repo');
    for (const args of [
      ['encrypt', img, disk, '--subformat', 'monolithicFlat'],
      ['backup', 'init', repo],
    ]) {
      const made = await runRecording(args);
      expect(made.code, made.stderr).toBe(0);
    }
    for (const args of [
      ['info', disk],
      ['backup', 'create', disk, repo],
    ]) {
      const r = await runRecording(args);
      expect(r.code, r.stderr).toBe(0);
      const sources = r.modules;
      expect(sources.some((s) => s.endsWith('vmdk/open.ts'))).toBe(true); // the recording works
      expect(sources.filter((s) => /(^|\/)src\/(serve|vm|kmip)\//.test(s) || /nbd/i.test(s))).toEqual([]);
      // Neither needs the copy pipeline, nor backup create the restore and rewrap paths (src/cli/commands/backup-create.ts).
      expect(sources.filter((s) => /(^|\/)src\/(backup\/restore|backup\/rewrap|pipeline\/copy)/.test(s))).toEqual([]);
    }
  });
});
