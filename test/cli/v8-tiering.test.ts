// A batch raises V8's interrupt budget (src/cli/v8-tiering.ts) once, in bin/vmseal.js before the
// CLI's script is compiled (its worker threads share the process's flags); other commands, a single
// image's convert among them, keep V8's defaults, and a budget given on node's command line is
// kept. The built CLI runs with a preload that records every v8.setFlagsFromString call. (That the
// code caches stay valid under it: code-cache.test.ts.)
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cacheFileFor } from '../../src/cli/code-cache.js';
import { BATCH_INTERRUPT_BUDGET, isBatchCommandLine, useBatchTiering } from '../../src/cli/v8-tiering.js';
import { cleanEnv, vmseal } from './run-cli.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-v8-tiering-'));
  mkdirSync(join(dir, 'in'));
  for (let i = 0; i < 3; i++) writeFileSync(join(dir, 'in', `d${i}.img`), Buffer.alloc(1 << 20, i + 1));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Run the CLI under `node ...nodeArgs`; resolves to its exit code, the V8 flags it set, in order,
 * and the public built-in modules the main thread loaded after it first set one.
 */
async function runRecordingFlags(
  args: string[],
  nodeArgs: string[] = [],
): Promise<{ code: number | null; stderr: string; flags: string[]; lateBuiltins: string[] }> {
  const preload = join(dir, 'record.cjs');
  const out = join(dir, 'flags.json');
  rmSync(out, { force: true });
  writeFileSync(
    preload,
    `const v8 = require('node:v8');
const set = v8.setFlagsFromString;
const flags = [];
let loadedBefore;
v8.setFlagsFromString = (f) => { flags.push(f); loadedBefore ??= process.moduleLoadList.length; return set(f); };
process.on('exit', () => {
  const late = loadedBefore === undefined ? [] : process.moduleLoadList.slice(loadedBefore).filter((m) => /^NativeModule (?!internal\\/)/.test(m));
  require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify({ flags, late }));
});\n`,
  );
  const r = await vmseal(args, cleanEnv({ VMSEAL_HOME: join(dir, 'home') }), { nodeArgs: [...nodeArgs, '--require', preload] });
  const seen = existsSync(out) ? (JSON.parse(readFileSync(out, 'utf8')) as { flags: string[]; late: string[] }) : { flags: [], late: [] };
  return { code: r.code, stderr: r.stderr, flags: seen.flags, lateBuiltins: seen.late };
}

describe("a batch's V8 tiering", () => {
  it('raises the interrupt budget once for a batch (with a worker thread), never for other commands', async () => {
    const batch = await runRecordingFlags(['convert', join(dir, 'in'), join(dir, 'out'), '--subformat', 'monolithicSparse', '--encrypt', '--jobs', '4']);
    expect(batch.code, batch.stderr).toBe(0);
    expect(batch.flags).toEqual([`--interrupt-budget=${BATCH_INTERRUPT_BUDGET}`]);
    // Node's cached code of a built-in is rejected under the new flag: the batch's are loaded before it (BATCH_BUILTINS).
    expect(batch.lateBuiltins).toEqual([]);
    expect((await runRecordingFlags(['--version'])).flags).toEqual([]);
    const one = await runRecordingFlags(['convert', join(dir, 'in', 'd0.img'), join(dir, 'one.vmdk'), '--subformat', 'monolithicSparse']);
    expect(one.code, one.stderr).toBe(0);
    expect(one.flags).toEqual([]);
  });

  it("keeps a budget given on node's command line", async () => {
    const own = await runRecordingFlags(
      ['convert', join(dir, 'in'), join(dir, 'out2'), '--subformat', 'monolithicSparse', '--jobs', '1'],
      ['--interrupt-budget=100000'],
    );
    expect(own.code, own.stderr).toBe(0);
    expect(own.flags).toEqual([]);
    expect(useBatchTiering(['convert', join(dir, 'in'), join(dir, 'out3')], ['--interrupt_budget=5000'])).toBe(false);
    expect(useBatchTiering(['convert', join(dir, 'in'), join(dir, 'out3')], ['--interrupt-budget', '5000'])).toBe(false);
  });

  it('tells a batch command line from others, and gives it its own code cache', () => {
    const folders = new Set(['/imgs', '/out']);
    const isFolder = (p: string): boolean => folders.has(p);
    expect(isBatchCommandLine(['convert', '/imgs', '/out', '--subformat', 'raw'], isFolder)).toBe(true);
    expect(isBatchCommandLine(['--json', 'convert', '--list', 'todo.txt', '/out'], isFolder)).toBe(true);
    expect(isBatchCommandLine(['convert', '--list=todo.txt', '/new'], isFolder)).toBe(true);
    expect(isBatchCommandLine(['convert', 'a.img', 'b.vmdk', '--subformat', 'monolithicSparse'], isFolder)).toBe(false);
    expect(isBatchCommandLine(['encrypt', '/imgs', '/out'], isFolder)).toBe(false);
    expect(isBatchCommandLine(['--version'], isFolder)).toBe(false);
    expect(cacheFileFor('/d/main.js', ['convert', '/imgs', '/out'], (a) => isBatchCommandLine(a, isFolder))).toBe('/d/main.js.convert-batch.cache');
    expect(cacheFileFor('/d/main.js', ['convert', 'a.img', 'b.vmdk'], (a) => isBatchCommandLine(a, isFolder))).toBe('/d/main.js.convert.cache');
    expect(BATCH_INTERRUPT_BUDGET).toBe(270336);
  });
});
