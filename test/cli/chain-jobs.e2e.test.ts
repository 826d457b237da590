// Every job given a layer's path works on the chain ending at that layer: info, verify, convert and
// decrypt of plain chains made by qemu-img and of encrypted chains, and a snapshot commit and a
// shallow rekey of an encrypted chain through the built CLI.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { cleanEnv, json, vmseal, type CliResult } from './run-cli.js';

let work: string;
beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), 'vmseal-chain-jobs-'));
});
afterAll(() => rmSync(work, { recursive: true, force: true }));

function ok(r: CliResult): CliResult {
  expect(r.code, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(0);
  return r;
}

const qemuIo = (path: string, ...cmds: string[]): void => {
  execFileSync('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), path]);
};
const flat = (path: string, out: string): string => {
  execFileSync('qemu-img', ['convert', '-O', 'raw', path, out]);
  return out;
};

describe('jobs on a plain chain made by qemu-img, given any layer', () => {
  it('info, verify and convert see the chain ending at the layer given', async () => {
    const env = cleanEnv({ VMSEAL_HOME: join(work, 'home-plain') });
    const [base, mid, top] = ['base.vmdk', 'mid.vmdk', 'top.vmdk'].map((f) => join(work, f));
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    qemuIo(base, 'write -P 0x11 0 2M');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'base.vmdk', '-F', 'vmdk', mid], { cwd: work });
    qemuIo(mid, 'write -P 0x22 1M 64k');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'mid.vmdk', '-F', 'vmdk', top], { cwd: work });
    qemuIo(top, 'write -P 0x33 3M 4k');
    const topRaw = flat(top, join(work, 'top.raw'));
    const midRaw = flat(mid, join(work, 'mid.raw'));
    expect(readFileSync(topRaw).equals(readFileSync(midRaw))).toBe(false);

    ok(await vmseal(['verify', top, '--against', topRaw], env));
    ok(await vmseal(['verify', mid, '--against', midRaw], env));
    const wrong = await vmseal(['verify', mid, '--against', topRaw], env);
    expect(wrong.code).toBe(6); // mid's chain is not top's
    const info = json(ok(await vmseal(['info', mid, '--json'], env)));
    expect(info.chain.map((l: { path: string }) => l.path)).toEqual([mid, base]);
    const copy = join(work, 'mid-copy.vmdk');
    ok(await vmseal(['convert', mid, copy], env));
    execFileSync('qemu-img', ['compare', '-q', copy, midRaw]);
    expect(execFileSync('qemu-img', ['info', copy], { encoding: 'utf8' })).not.toContain('backing file');
  });
});

describe('jobs on an encrypted chain', () => {
  it('decrypt of any layer gives that chain\u2019s plaintext; commit and shallow rekey through the CLI', async () => {
    const pw = join(work, 'pw.txt');
    writeFileSync(pw, 'correct horse battery\n');
    const pw2 = join(work, 'pw2.txt');
    writeFileSync(pw2, 'another staple\n');
    const env = cleanEnv({ VMSEAL_HOME: join(work, 'home-enc') });
    const unlock = ['--recovery-passphrase', '--passphrase-file', pw];
    const src = join(work, 'src.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', src, '2M']);
    qemuIo(src, 'write -P 0x17 0 1M');
    const enc = join(work, 'enc.vmdk');
    ok(await vmseal(['encrypt', src, enc, ...unlock, '--pbkdf2-rounds', '1000'], env));
    const child = ok(await vmseal(['snapshot', 'create', enc, ...unlock], env)).stdout.trim();
    const d = await openDisk(child, { keys: { passphrase: 'correct horse battery' } });
    await d.write(512 * 1024, Buffer.alloc(8192, 0x5a));
    await d.close();

    const childPlain = join(work, 'child-plain.raw');
    const basePlain = join(work, 'base-plain.raw');
    ok(await vmseal(['decrypt', child, childPlain, '--raw', ...unlock], env));
    ok(await vmseal(['decrypt', enc, basePlain, '--raw', ...unlock], env));
    expect(
      readFileSync(childPlain)
        .subarray(512 * 1024, 520 * 1024)
        .every((b) => b === 0x5a),
    ).toBe(true);
    expect(
      readFileSync(basePlain)
        .subarray(512 * 1024, 520 * 1024)
        .every((b) => b === 0x17),
    ).toBe(true);
    const info = json(ok(await vmseal(['info', child, '--json', ...unlock], env)));
    expect(info.chain).toHaveLength(2);
    expect(info.encryption.unlockable).toBe(true);

    // Shallow rekey of the chain (a new KEK): every layer gets the new KeySafe.
    const before = (await readEncryptionParams(enc))!.keySafe;
    ok(await vmseal(['rekey', child, '--shallow', ...unlock], env));
    const after = (await readEncryptionParams(child))!.keySafe;
    expect(after).not.toBe(before);
    expect((await readEncryptionParams(enc))!.keySafe).toBe(after);
    // Commit: the base holds the chain's content afterwards.
    const commit = json(ok(await vmseal(['snapshot', 'commit', child, '--json', ...unlock], env)));
    expect(commit).toMatchObject({ top: enc, removed: child });
    expect(existsSync(child)).toBe(false);
    ok(await vmseal(['verify', enc, '--against', childPlain, ...unlock], env));
    const deep = await vmseal(['rekey', enc, '--deep', '--new-passphrase-file', pw2, ...unlock, '--pbkdf2-rounds', '1000'], env);
    expect(deep.code, deep.stderr).toBe(0); // one layer left: a deep rekey works again
  });
});
