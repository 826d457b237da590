// The CLI raises V8's interrupt budget (src/cli/v8-tiering.ts) once, in bin/vmseal.js before its
// script is compiled, for every command (a batch's worker threads share the process's flags); a
// budget given on node's command line is kept. The built CLI runs with a preload that records
// every v8.setFlagsFromString call. (That the code caches stay valid under it: code-cache.test.ts.)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CLI_INTERRUPT_BUDGET, useCliTiering } from '../../src/cli/v8-tiering.js';
import { BIN, cleanEnv } from './run-cli.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-v8-tiering-'));
  mkdirSync(join(dir, 'in'));
  for (let i = 0; i < 3; i++) writeFileSync(join(dir, 'in', `d${i}.img`), Buffer.alloc(1 << 20, i + 1));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** Run the CLI under `node ...nodeArgs`; resolves to its exit code and the V8 flags it set, in order. */
function runRecordingFlags(args: string[], nodeArgs: string[] = []): Promise<{ code: number | null; stderr: string; flags: string[] }> {
  const preload = join(dir, 'record.cjs');
  const out = join(dir, 'flags.json');
  rmSync(out, { force: true });
  writeFileSync(
    preload,
    `const v8 = require('node:v8');
const set = v8.setFlagsFromString;
const flags = [];
v8.setFlagsFromString = (f) => { flags.push(f); return set(f); };
process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(flags)));\n`,
  );
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgs, '--require', preload, BIN, ...args], {
      env: cleanEnv({ VMSEAL_HOME: join(dir, 'home') }),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stderr, flags: existsSync(out) ? (JSON.parse(readFileSync(out, 'utf8')) as string[]) : [] }));
  });
}

describe("the CLI's V8 tiering", () => {
  it('raises the interrupt budget once per process, whatever the command (a batch with a worker thread too)', async () => {
    const budget = `--interrupt-budget=${CLI_INTERRUPT_BUDGET}`;
    expect((await runRecordingFlags(['--version'])).flags).toEqual([budget]);
    const batch = await runRecordingFlags(['convert', join(dir, 'in'), join(dir, 'out'), '--subformat', 'monolithicSparse', '--encrypt', '--jobs', '4']);
    expect(batch.code, batch.stderr).toBe(0);
    expect(batch.flags).toEqual([budget]);
  });

  it("keeps a budget given on node's command line", async () => {
    const own = await runRecordingFlags(
      ['convert', join(dir, 'in'), join(dir, 'out2'), '--subformat', 'monolithicSparse', '--jobs', '1'],
      ['--interrupt-budget=100000'],
    );
    expect(own.code, own.stderr).toBe(0);
    expect(own.flags).toEqual([]);
  });

  it('recognises a budget on the command line in both spellings', () => {
    expect(useCliTiering(['--interrupt-budget=5000'])).toBe(false);
    expect(useCliTiering(['--interrupt_budget=5000'])).toBe(false);
    expect(useCliTiering(['--interrupt-budget', '5000'])).toBe(false);
    expect(CLI_INTERRUPT_BUDGET).toBe(270336);
  });
});
