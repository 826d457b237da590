// backup restore --over killed at any point — a simulated power loss through the fault-injecting
// file layer (test/helpers/crash-fs.ts) at every few durability-relevant calls, a crash while
// resuming, and SIGKILL of the CLI at several moments — leaves the disk untouched, rolled back, or
// refused with ERR_INTERRUPTED_JOB (by src/disk and by backup create) until `vmseal resume`
// finishes it; then it is the point's disk (ciphertext view and allocation).
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, resumeBackupRestore } from '../../src/backup/index.js';
import { openDisk } from '../../src/disk/index.js';
import { resumeDisk } from '../../src/pipeline/index.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { BIN, json, vmseal } from '../cli/run-cli.js';
import { backupErrorOf, encryptedDisk, noKeyEnv, PASS, qemuDataBytes } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-over-crash-');
});
afterAll(() => tmp.cleanup());

const noKey = (): NodeJS.ProcessEnv => noKeyEnv(tmp.dir);

describe('a killed rollback', () => {
  let child: string;
  let repo: string;
  let pointDisk: string;
  let changed: string;
  beforeAll(async () => {
    child = await bundleFixture(new URL('./fixtures/rollback-child.ts', import.meta.url));
    const dir = join(tmp.dir, 'crash');
    mkdirSync(dir);
    pointDisk = await encryptedDisk(dir, 'p', 'monolithicSparse', 16 * MiB, [
      { at: 0, data: patternBytes(3 * MiB, 73) },
      { at: 9 * MiB, data: patternBytes(MiB, 74) },
    ]);
    repo = join(dir, 'repo');
    await initRepository(repo);
    await createBackup(pointDisk, repo);
    // The same disk, changed since: two chunks rewritten, one hole of the point filled, one chunk emptied.
    changed = join(dir, 'changed.vmdk');
    copyFileSync(pointDisk, changed);
    const d = await openDisk(changed, { keys: { passphrase: PASS } });
    try {
      await d.write(MiB + 4096, patternBytes(8192, 75));
      await d.write(2 * MiB, patternBytes(MiB, 76));
      await d.write(12 * MiB, patternBytes(65536, 77));
      await d.write(9 * MiB, Buffer.alloc(MiB));
    } finally {
      await d.close();
    }
  });
  afterAll(() => rmSync(child, { force: true }));

  function runChild(op: string, disk: string, crashAt: number) {
    const r = spawnSync(process.execPath, [child, op, repo, disk], {
      env: { ...process.env, CRASH_ROOT: join(disk, '..'), CRASH_AT: String(crashAt), CRASH_KEEP: 'none' },
      encoding: 'utf8',
    });
    return { signal: r.signal, status: r.status, stderr: r.stderr, events: Number(/events=(\d+)/.exec(r.stdout)?.[1] ?? 0) };
  }

  /** A fresh copy of the changed disk in its own folder. */
  function freshCopy(name: string): string {
    const dir = join(tmp.dir, 'crash', name);
    mkdirSync(dir);
    const disk = join(dir, 'changed.vmdk');
    copyFileSync(changed, disk);
    return disk;
  }

  /** Untouched, rolled back, or refused until resume finishes it — then rolled back. */
  async function checkAfterKill(disk: string, what: string, cli = false): Promise<'untouched' | 'done' | 'resumed'> {
    const same = (a: string) => spawnSync('qemu-img', ['compare', '-q', a, disk]).status === 0;
    if (!existsSync(`${disk}.vmseal-journal`)) {
      if (same(pointDisk)) return 'done';
      expect(same(changed), `${what}: no journal, so untouched`).toBe(true);
      return 'untouched';
    }
    expect((await backupErrorOf(openDisk(disk, { keys: { passphrase: PASS } }))).code, what).toBe('ERR_INTERRUPTED_JOB');
    expect((await backupErrorOf(createBackup(disk, repo))).code, what).toBe('ERR_INTERRUPTED_JOB');
    if (cli) {
      const r = await vmseal(['resume', disk, '--json'], noKey());
      expect(r.code, `${what}: ${r.stderr}`).toBe(0);
      expect(json(r)).toMatchObject({ operation: 'restore-over', resumed: true });
    } else {
      expect(await resumeBackupRestore(disk), what).toMatchObject({ resumed: true });
    }
    expect(same(pointDisk), `${what}: rolled back by resume`).toBe(true);
    expect(await qemuDataBytes(disk)).toBe(await qemuDataBytes(pointDisk));
    return 'resumed';
  }

  it('at every step of a simulated power loss: untouched, or refused until vmseal resume rolls it back', async () => {
    const dry = freshCopy('dry');
    const ok = runChild('rollback', dry, 0);
    expect(ok.status, ok.stderr).toBe(0);
    expect(spawnSync('qemu-img', ['compare', '-q', pointDisk, dry]).status).toBe(0);
    const seen = new Set<string>();
    console.log(`rollback: ${ok.events} durability-relevant calls`);
    for (let at = 1; at <= ok.events; at += Math.max(1, Math.floor(ok.events / 6))) {
      const disk = freshCopy(`power-${at}`);
      const killed = runChild('rollback', disk, at);
      expect(killed.signal, `crash at ${at}: ${killed.stderr}`).toBe('SIGKILL');
      seen.add(await checkAfterKill(disk, `crash at ${at} of ${ok.events}`));
    }
    // And a crash while resuming: the next resume finishes.
    const twice = freshCopy('twice');
    expect(runChild('rollback', twice, Math.floor(ok.events / 2)).signal).toBe('SIGKILL');
    expect(existsSync(`${twice}.vmseal-journal`)).toBe(true);
    expect(runChild('resume', twice, 3).signal).toBe('SIGKILL');
    // The pipeline's resume does not finish a rollback: it says to use vmseal resume (resumeBackupRestore).
    await expect(resumeDisk(twice)).rejects.toMatchObject({
      code: 'ERR_INTERRUPTED_JOB',
      message: expect.stringMatching(/in the middle of a rollback to backup point/),
    });
    // A journal changed by someone without the repository's id fails its MAC: nothing is done from it.
    const journal = `${twice}.vmseal-journal`;
    const original = readFileSync(journal);
    const forged = Buffer.from(original);
    const at = forged.indexOf('"started":"2') + 11;
    forged[at] = forged[at] === 0x32 ? 0x33 : 0x32;
    writeFileSync(journal, forged);
    expect((await backupErrorOf(resumeBackupRestore(twice))).code).toBe('ERR_JOURNAL');
    writeFileSync(journal, original);
    expect(await checkAfterKill(twice, 'crash during resume')).toBe('resumed');
    expect(seen.has('resumed')).toBe(true);
  });

  it('SIGKILL of the CLI at several moments: untouched, rolled back, or refused until vmseal resume', async () => {
    for (const delay of [150, 300, 450, 600, 900]) {
      const disk = freshCopy(`kill-${delay}`);
      const proc = spawn(process.execPath, [BIN, 'backup', 'restore', repo, 'latest', '--over', disk], { env: noKey(), stdio: 'ignore' });
      // Listened for from the start: a rollback that ends before the kill has already exited.
      const exited = new Promise((r) => proc.once('exit', r));
      await new Promise((r) => setTimeout(r, delay));
      proc.kill('SIGKILL');
      await exited;
      await checkAfterKill(disk, `SIGKILL after ${delay} ms`, true);
    }
    // The CLI's resume finishes a power-lost rollback too; after it, there is nothing left to resume.
    const disk = freshCopy('cli-resume');
    expect(runChild('rollback', disk, 20).signal).toBe('SIGKILL');
    expect(await checkAfterKill(disk, 'power loss, CLI resume', true)).toBe('resumed');
    expect(await resumeBackupRestore(disk)).toBeNull();
  });
});
