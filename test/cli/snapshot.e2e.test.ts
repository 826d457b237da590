// `vmseal snapshot create|list|revert` and `vmseal info` on chains, through the built CLI.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, json, vmseal, type CliResult } from './run-cli.js';

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'vmseal-snapshot-cli-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function ok(r: CliResult): CliResult {
  expect(r.code, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r;
}

const flat = (path: string, out: string): Buffer => {
  execFileSync('qemu-img', ['convert', '-O', 'raw', path, out]);
  return readFileSync(out);
};

describe('vmseal snapshot', () => {
  it('create prints the new top, list shows the chain, revert discards the changes; info shows the chain', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(work, 'home') });
    const base = join(work, 'vm.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x42 0 1M', base]);
    const before = flat(base, join(work, 'before.raw'));

    const created = ok(await vmseal(['snapshot', 'create', base], env));
    const top = join(work, 'vm-000001.vmdk');
    expect(created.stdout.trim()).toBe(top);
    const second = json(ok(await vmseal(['snapshot', 'create', top, '--name', 'after-update', '--json'], env)));
    const newTop = join(work, 'after-update.vmdk');
    expect(second.top).toBe(newTop);

    const list = json(ok(await vmseal(['snapshot', 'list', newTop, '--json'], env)));
    expect(list.layers.map((l: { path: string }) => l.path)).toEqual([newTop, top, base]);
    expect(list.layers[0].parentCid).toBe(list.layers[1].cid);
    expect(ok(await vmseal(['snapshot', 'list', newTop], env)).stdout).toContain(base);

    const info = json(ok(await vmseal(['info', newTop, '--json'], env)));
    expect(info.chain.map((l: { path: string }) => l.path)).toEqual([newTop, top, base]);
    expect(ok(await vmseal(['info', newTop], env)).stdout).toContain('snapshot chain');

    execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x99 0 64k', newTop]);
    expect(flat(newTop, join(work, 'changed.raw')).equals(before)).toBe(false);
    ok(await vmseal(['snapshot', 'revert', newTop], env));
    expect(flat(newTop, join(work, 'reverted.raw')).equals(before)).toBe(true);

    // A base has nothing to revert to; a layer with children cannot be the one reverted.
    const r = await vmseal(['snapshot', 'revert', base], env);
    expect(r.code).toBe(5);
    expect(r.stderr).toContain('nothing to revert to');
  });
});
