// Start-up cost of the CLI: a command loads what it uses. `vmseal encrypt` with local keys, run from
// a script (no terminal), must not load the TLS stack (KMIP and serve only) nor the progress bar
// library (terminals only) — each costs start-up time that short jobs pay in full.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, cleanEnv } from './run-cli.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-startup-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** Run the CLI with a preload that records, at exit, the built-in modules and CommonJS files it loaded. */
function runRecording(args: string[]): Promise<{ code: number | null; stderr: string; builtins: string[]; files: string[] }> {
  const preload = join(dir, 'record.cjs');
  const out = join(dir, 'loaded.json');
  writeFileSync(
    preload,
    `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify({
      builtins: process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13)),
      files: Object.keys(require.cache),
    })));\n`,
  );
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--require', preload, BIN, ...args], {
      env: cleanEnv({ VMSEAL_HOME: join(dir, 'home') }),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d) => (stderr += String(d)));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      const loaded = JSON.parse(readFileSync(out, 'utf8')) as { builtins: string[]; files: string[] };
      resolve({ code, stderr, ...loaded });
    });
  });
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

  it('--version loads no TLS either', async () => {
    const r = await runRecording(['--version']);
    expect(r.code).toBe(0);
    expect(r.builtins).not.toContain('tls');
  });
});
