// `vmseal snapshot` on an encrypted disk, through the built CLI (the plain cases: snapshot.e2e.test.ts).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanEnv, json, vmseal, type CliResult } from './run-cli.js';

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'vmseal-snapshot-enc-cli-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function ok(r: CliResult): CliResult {
  expect(r.code, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r;
}

describe('vmseal snapshot of an encrypted disk', () => {
  it('an encrypted disk: create and revert with its passphrase; list needs no key', async () => {
    const pw = join(work, 'pw.txt');
    writeFileSync(pw, 'correct horse battery\n');
    const env = cleanEnv({ VMSEAL_HOME: join(work, 'home2') });
    const src = join(work, 'src.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', src, '2M']);
    execFileSync('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x17 0 2M', src]);
    const enc = join(work, 'enc.vmdk');
    ok(await vmseal(['encrypt', src, enc, '--recovery-passphrase', '--passphrase-file', pw, '--pbkdf2-rounds', '1000'], env));
    const child = ok(await vmseal(['snapshot', 'create', enc, '--recovery-passphrase', '--passphrase-file', pw], env)).stdout.trim();
    expect(child).toBe(join(work, 'enc-000001.vmdk'));
    const list = json(ok(await vmseal(['snapshot', 'list', child, '--json'], env)));
    expect(list.layers[0].encrypted).toBe(true);
    expect(list.layers[0].parentLayerId).toBe(list.layers[1].layerId);
    // A convert flattens the chain into a standalone disk under the same DEK (no parent layer id).
    const flatCopy = join(work, 'flat-copy.vmdk');
    ok(await vmseal(['convert', child, flatCopy, '--recovery-passphrase', '--passphrase-file', pw], env));
    ok(await vmseal(['verify', flatCopy, '--against', src, '--recovery-passphrase', '--passphrase-file', pw], env));
    ok(await vmseal(['snapshot', 'revert', child, '--recovery-passphrase', '--passphrase-file', pw], env));
    const verify = await vmseal(['verify', child, '--against', src, '--recovery-passphrase', '--passphrase-file', pw], env);
    expect(verify.code, verify.stderr).toBe(0);
  });
});
