// A restore crashed at any point (simulated power loss through the fault-injecting file layer,
// then SIGKILL) leaves no OUT or a whole one; a power loss just after it returned leaves OUT whole.
// The staging folder a killed restore leaves is removed by the next restore into the folder, unless
// a live process still holds its name.
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, restoreBackup } from '../../src/backup/index.js';
import { NameReservations } from '../../src/pipeline/lock.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { encryptedDisk } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let child: string;
let disk: string;
let repo: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-backup-crash-restore-');
  child = await bundleFixture(new URL('./fixtures/backup-child.ts', import.meta.url));
  disk = await encryptedDisk(tmp.dir, 'd', 'monolithicSparse', 16 * MiB, [{ at: 0, data: patternBytes(6 * MiB, 63) }]);
  repo = join(tmp.dir, 'repo');
  await initRepository(repo);
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

function run(out: string, crashAt: number) {
  const r = spawnSync(process.execPath, [child, 'restore', repo, join(out, 'r.vmdk')], {
    env: { ...process.env, CRASH_ROOT: out, CRASH_AT: String(crashAt), CRASH_KEEP: 'none' },
    encoding: 'utf8',
  });
  return { signal: r.signal, status: r.status, stderr: r.stderr, events: Number(/events=(\d+)/.exec(r.stdout)?.[1] ?? 0) };
}

const stages = (dir: string): string[] => readdirSync(dir).filter((f) => f.startsWith('.vmseal-restore-'));

function crashPoints(total: number, n: number): number[] {
  // The first call, the last, and evenly between.
  const pts = new Set<number>([1, total]);
  for (let i = 1; i < n - 1; i++) pts.add(Math.max(1, Math.round((i * total) / (n - 1))));
  return [...pts].filter((p) => p >= 1 && p <= total).sort((x, y) => x - y);
}

describe('a crashed restore', () => {
  it('leaves no OUT or a whole one (and at most its staging folder)', async () => {
    await createBackup(disk, repo);
    const dryOut = join(tmp.dir, 'restore-dry');
    mkdirSync(dryOut);
    const dry = run(dryOut, 0);
    expect(dry.status, dry.stderr).toBe(0);
    for (const at of crashPoints(dry.events, 5)) {
      const out = join(tmp.dir, `restore-${at}`);
      mkdirSync(out);
      const killed = run(out, at);
      expect(killed.signal, `crash at ${at}: ${killed.stderr}`).toBe('SIGKILL');
      const r = join(out, 'r.vmdk');
      // The last point is a power loss just after the restore returned: OUT must be there, whole.
      if (at === dry.events) expect(existsSync(r), 'OUT after a completed restore').toBe(true);
      if (existsSync(r)) execFileSync('qemu-img', ['compare', '-q', disk, r]);
      expect(readdirSync(out).filter((f) => f !== 'r.vmdk' && f !== 'after-the-job' && !f.startsWith('.vmseal-restore-') && f !== '.vmseal-lock')).toEqual([]);
      rmSync(out, { recursive: true });
    }
  });
});

describe('the staging folder of a killed restore', () => {
  let events = 0;
  beforeAll(async () => {
    await createBackup(disk, repo);
    const dryOut = join(tmp.dir, 'stale-dry');
    mkdirSync(dryOut);
    const dry = run(dryOut, 0);
    expect(dry.status, dry.stderr).toBe(0);
    events = dry.events;
    rmSync(dryOut, { recursive: true });
  });

  it('is removed by the next restore into the same folder, which succeeds', async () => {
    const out = join(tmp.dir, 'stale-killed');
    mkdirSync(out);
    const killed = run(out, Math.max(1, Math.floor(events / 2)));
    expect(killed.signal, killed.stderr).toBe('SIGKILL');
    expect(stages(out)).toHaveLength(1);
    expect(existsSync(join(out, 'r.vmdk'))).toBe(false);
    const r = await restoreBackup(repo, 'latest', join(out, 'r.vmdk'));
    execFileSync('qemu-img', ['compare', '-q', disk, r.path]);
    expect(stages(out)).toEqual([]);
    rmSync(out, { recursive: true });
  });

  it('is left alone while a live process holds its name (a restore still writing)', async () => {
    const out = join(tmp.dir, 'stale-alive');
    mkdirSync(out);
    const live = join(out, '.vmseal-restore-0123456789ab');
    mkdirSync(live);
    writeFileSync(join(live, 'r.vmdk'), 'being written');
    // Held through its own open file description, as another process's restore would hold it.
    const owner = new NameReservations();
    try {
      await owner.reserve([live], 'exclusive');
      await restoreBackup(repo, 'latest', join(out, 'a.vmdk'));
      expect(stages(out)).toEqual(['.vmseal-restore-0123456789ab']);
      expect(existsSync(join(live, 'r.vmdk'))).toBe(true);
    } finally {
      owner.close();
    }
    // Once its owner is gone, the next restore removes it.
    await restoreBackup(repo, 'latest', join(out, 'b.vmdk'));
    expect(stages(out)).toEqual([]);
    rmSync(out, { recursive: true });
  });
});
