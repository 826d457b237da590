// Snapshot commit: the top of a chain merged into its parent, plain chains made by qemu-img and
// encrypted chains made by vmseal (ciphertext moves as it is), refusals, and the CLI.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { commitSnapshot, encryptInPlace, PipelineError } from '../../src/pipeline/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { createEncryptedDisk, createEncryptedSnapshot, openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { createSnapshot, openDisk as openVmdk } from '../../src/vmdk/index.js';
import { patternBytes, phraseLocker, sha256, tempDir } from '../disk/helpers.js';
import { cleanEnv, vmseal } from '../cli/run-cli.js';

const MiB = 1 << 20;
const keys = { passphrase: 'pw' };
let dir: string;
let cleanup: () => void;
beforeEach(() => ({ dir, cleanup } = tempDir('vmseal-commit-')));
afterEach(() => cleanup());

function run(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', cwd: dir });
}

function qemuIo(path: string, ...cmds: string[]): void {
  run('qemu-io', ['-f', 'vmdk', ...cmds.flatMap((c) => ['-c', c]), path]);
}

function qemuRaw(path: string): string {
  const out = join(dir, `flat-${Math.random().toString(36).slice(2)}.raw`);
  run('qemu-img', ['convert', '-O', 'raw', path, out]);
  return out;
}

function cidOf(path: string): string {
  return /\nCID=([0-9a-f]+)/.exec(
    readFileSync(path)
      .subarray(0, 64 * 1024)
      .toString('latin1'),
  )![1];
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: { code?: string }) => e.code,
  );
}

/** base ← mid ← top made and written by qemu-img / qemu-io: partial grains, whole grains, zeroed grains over data. */
function qemuChain(): { base: string; mid: string; top: string } {
  const [base, mid, top] = ['base.vmdk', 'mid.vmdk', 'top.vmdk'].map((f) => join(dir, f));
  run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '8M']);
  qemuIo(base, 'write -P 0x11 0 3M', 'write -P 0x12 5M 100k');
  run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', '-b', 'base.vmdk', '-F', 'vmdk', mid]);
  qemuIo(mid, 'write -P 0x21 512k 4k', 'write -P 0x22 2M 1M', 'write -z 5M 64k');
  run('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'mid.vmdk', '-F', 'vmdk', top]);
  qemuIo(top, 'write -P 0x31 1536 3072', 'write -P 0x32 7M 1M', 'write -P 0x33 2166784 512');
  return { base, mid, top };
}

describe('commit of a plain chain made by qemu-img', () => {
  it('the parent equals what qemu-img convert gave of the former top; the top is gone and the parent writable', async () => {
    const { base, mid, top } = qemuChain();
    const expected = qemuRaw(top);
    const result = await commitSnapshot(top);
    expect(result).toMatchObject({ top: mid, removed: top, encrypted: false });
    expect(result.bytesMoved).toBeGreaterThan(0);
    expect(existsSync(top)).toBe(false);
    expect(readdirSync(dir).filter((f) => /journal|vmseal-lock|\.tmp/.test(f))).toEqual([]);
    run('qemu-img', ['compare', '-q', mid, expected]); // exit 0: same content
    // The chain ending at mid still opens in qemu-img (mid's parent link kept), and commits again.
    const expected2 = qemuRaw(mid);
    await commitSnapshot(mid);
    run('qemu-img', ['compare', '-q', base, expected2]);
    run('qemu-img', ['compare', '-q', base, expected]);
    run('qemu-img', ['check', '-q', base]);
  });

  it('a zeroed grain of the child over the parent\u2019s data commits as zeros', async () => {
    const { mid } = qemuChain();
    const expected = qemuRaw(mid);
    expect(
      readFileSync(expected)
        .subarray(5 * MiB, 5 * MiB + 65536)
        .every((b) => b === 0),
    ).toBe(true);
    await commitSnapshot(mid);
    run('qemu-img', ['compare', '-q', join(dir, 'base.vmdk'), expected]);
  });

  it('refuses a disk without a parent and a layer with children, with typed errors', async () => {
    const base = join(dir, 'base.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    const err = await commitSnapshot(base).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PipelineError);
    expect((err as PipelineError).code).toBe('ERR_NOT_A_SNAPSHOT');
    const child = await createSnapshot(base);
    await createSnapshot(child); // child is a layer with a child of its own now (mode 0444)
    expect(await codeOf(commitSnapshot(child))).toBe('ERR_SNAPSHOT_HAS_CHILDREN');
    expect(statSync(child).mode & 0o222).toBe(0); // untouched
  });

  it('refuses a child whose parent has other snapshots (they would become unreadable)', async () => {
    const base = join(dir, 'base.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    qemuIo(base, 'write -P 0x61 0 1M');
    const first = await createSnapshot(base);
    const second = await createSnapshot(base, { name: 'other' }); // a second child of the same parent
    qemuIo(first, 'write -P 0x62 0 64k');
    const raw = readFileSync(base);
    expect(await codeOf(commitSnapshot(first))).toBe('ERR_SNAPSHOT_SIBLINGS');
    expect(readFileSync(base).equals(raw)).toBe(true);
    run('qemu-img', ['check', '-q', second]); // still opens: its parent did not change
  });

  it('vmseal snapshots: the committed parent is writable again and a write gives it a new CID', async () => {
    const base = join(dir, 'vm.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    qemuIo(base, 'write -P 0x41 0 1M');
    const child = await createSnapshot(base);
    expect(statSync(base).mode & 0o222).toBe(0);
    qemuIo(child, 'write -P 0x42 512k 1M');
    const expected = qemuRaw(child);
    await commitSnapshot(child);
    expect(statSync(base).mode & 0o200).not.toBe(0);
    run('qemu-img', ['compare', '-q', base, expected]);
    const cid = cidOf(base);
    const d = await openVmdk(base);
    await d.write(0, Buffer.alloc(512, 1));
    await d.close();
    expect(cidOf(base)).not.toBe(cid);
  });
});

describe('locks: a commit cannot race a writer', () => {
  it('a writer holds the top exclusively and the parents shared: commit, in-place jobs and a second writer are refused until it closes', async () => {
    const base = join(dir, 'vm.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    const child = await createSnapshot(base);
    const writer = await openDisk(child);
    try {
      expect(await codeOf(commitSnapshot(child))).toBe('ERR_DISK_BUSY');
      expect(await codeOf(openDisk(child))).toBe('ERR_LOCK_BUSY');
      expect(await codeOf(encryptInPlace(child, { lockers: [phraseLocker('pw')] }))).toBe('ERR_DISK_BUSY');
      const reader = await openDisk(child, { readOnly: true }); // readers are not refused
      await reader.close();
      await writer.write(0, Buffer.alloc(4096, 9));
    } finally {
      await writer.close();
    }
    // While a commit holds the parent (as it does from start to end), the chain is not opened for writing.
    const held = await acquireLock(base, 'test: a commit holding the parent');
    try {
      expect(await codeOf(openDisk(child))).toBe('ERR_LOCK_BUSY');
    } finally {
      await held.release();
    }
    await commitSnapshot(child);
    expect(existsSync(child)).toBe(false);
  });
});

describe('commit of an encrypted chain', () => {
  async function encryptedChain(): Promise<{ base: string; child: string; plain: Buffer }> {
    const base = join(dir, 'vm.vmdk');
    const d = await createEncryptedDisk(base, { capacity: 4 * MiB, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    const plain = Buffer.alloc(4 * MiB);
    patternBytes(3 * MiB, 5).copy(plain, 0);
    await d.write(0, plain.subarray(0, 3 * MiB));
    await d.close();
    const child = await createEncryptedSnapshot(base, { keys });
    const c = await openDisk(child, { keys });
    const more = patternBytes(1536 * 1024, 6);
    await c.write(0, more.subarray(0, 700)); // unit 0 changes: the parent's data check must follow
    await c.write(2 * MiB + 4096, more);
    await c.close();
    more.subarray(0, 700).copy(plain, 0);
    more.copy(plain, 2 * MiB + 4096);
    return { base, child, plain };
  }

  it('moves the ciphertext as it is, updates the parent\u2019s data check, keeps its authenticator', async () => {
    const { base, child, plain } = await encryptedChain();
    const ciphertextView = qemuRaw(child); // what qemu-img sees of the chain: ciphertext
    const before = (await readEncryptionParams(base))!;
    const result = await commitSnapshot(child, { keys });
    expect(result).toMatchObject({ top: base, removed: child, encrypted: true });
    expect(existsSync(child)).toBe(false);
    // Same bytes as stored: nothing was decrypted or re-encrypted.
    run('qemu-img', ['compare', '-q', base, ciphertextView]);
    const after = (await readEncryptionParams(base))!;
    expect(after.authenticator).toBe(before.authenticator);
    expect(after.layerId).toBe(before.layerId);
    expect(after.keySafe).toBe(before.keySafe);
    expect(after.dataCheck).not.toBe(before.dataCheck);
    const d = await openDisk(base, { keys }); // data check, authenticator: every check of openDisk
    try {
      expect(sha256(await d.read(0, d.capacity))).toBe(sha256(plain));
      await d.write(MiB, Buffer.alloc(4096, 7)); // writable again
    } finally {
      await d.close();
    }
  });

  it('needs the keys, and refuses the wrong ones before anything is written', async () => {
    const { base, child } = await encryptedChain();
    const raw = readFileSync(base);
    expect(await codeOf(commitSnapshot(child))).toBe('ERR_DISK_ENCRYPTED');
    expect(await codeOf(commitSnapshot(child, { keys: { passphrase: 'wrong' } }))).toBe('ERR_WRONG_KEY');
    expect(readFileSync(base).equals(raw)).toBe(true);
    expect(existsSync(child)).toBe(true);
  });
});

describe('vmseal snapshot commit', () => {
  it('commits the top, prints the new top, and refuses a base disk (exit 2)', async () => {
    const base = join(dir, 'disk.vmdk');
    run('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    qemuIo(base, 'write -P 0x51 0 1M');
    const child = await createSnapshot(base);
    qemuIo(child, 'write -P 0x52 64k 64k');
    const expected = qemuRaw(child);
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
    const r = await vmseal(['snapshot', 'commit', child, '--json'], env);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, command: 'snapshot commit', top: base, removed: child });
    run('qemu-img', ['compare', '-q', base, expected]);
    const again = await vmseal(['snapshot', 'commit', base], env);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('has no parent disk');
    expect(spawnSync('qemu-img', ['info', base]).status).toBe(0);
  });
});
