// A backup or prune killed at any point (SIGKILL after a simulated power loss: the fault-injecting
// file layer drops every write and folder entry that no fsync covered) leaves a repository that
// verifies; the next backup reuses the chunks already there and the point restores the disk.
// (A crashed restore: crash-restore.test.ts.)
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, listBackups, pruneBackup, restoreBackup, verifyBackup } from '../../src/backup/index.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';
import { runCrashChild } from '../helpers/crash-run.js';
import { parseManifest } from '../../src/backup/manifest.js';
import { entryOf, POINT_INDEX_FILE } from '../../src/backup/point-index.js';
import { encryptedDisk } from './helpers.js';

const MiB = 1 << 20;
const DATA_CHUNKS = 6;
let tmp: ReturnType<typeof tempDir>;
let child: string;
let disk: string;
let template: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-backup-crash-');
  child = await bundleFixture(new URL('./fixtures/backup-child.ts', import.meta.url));
  disk = await encryptedDisk(tmp.dir, 'd', 'monolithicSparse', 16 * MiB, [{ at: 0, data: patternBytes(DATA_CHUNKS * MiB, 61) }]);
  template = join(tmp.dir, 'template');
  await initRepository(template);
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

function run(op: 'create' | 'prune', repo: string, crashAt: number, keep: string) {
  const args = op === 'create' ? [disk, repo] : [repo];
  return runCrashChild(child, [op, ...args], { root: repo, crashAt, keep });
}

function freshRepo(name: string): string {
  const repo = join(tmp.dir, name);
  execFileSync('cp', ['-a', template, repo]);
  return repo;
}

/**
 * The point index (a cache, src/backup/point-index.ts) after a crash: absent or empty, or each entry
 * it has for a manifest that is there is that manifest's (entries of removed manifests are dropped by
 * readers); and after the next backup it lists exactly the manifests.
 */
function indexState(repo: string): { stale: unknown[]; complete: boolean } {
  const id = (JSON.parse(readFileSync(join(repo, 'vmseal-backup.json'), 'utf8')) as { id: string }).id;
  const manifests = new Map(
    readdirSync(join(repo, 'points'))
      .filter((f) => f.endsWith('.json'))
      .map((f) => {
        const { id: eid, history, name, line, ...rest } = entryOf(parseManifest(readFileSync(join(repo, 'points', f), 'utf8'), f.slice(0, -5), id));
        return [eid, [eid, history, name, line, rest]] as const;
      }),
  );
  let listed: unknown[][] = [];
  try {
    listed = (JSON.parse(readFileSync(join(repo, POINT_INDEX_FILE), 'utf8')) as { points: unknown[][] }).points;
  } catch {
    // absent, or empty after the power loss: rebuilt by the next reader
  }
  const stale = listed.filter((e) => manifests.has(e[0] as string) && JSON.stringify(manifests.get(e[0] as string)) !== JSON.stringify(e));
  const complete = JSON.stringify(listed) === JSON.stringify([...manifests.keys()].sort().map((k) => manifests.get(k)));
  return { stale, complete };
}

function crashPoints(total: number, n: number): number[] {
  // The first call, the last, and evenly between.
  const pts = new Set<number>([1, total]);
  for (let i = 1; i < n - 1; i++) pts.add(Math.max(1, Math.round((i * total) / (n - 1))));
  return [...pts].filter((p) => p >= 1 && p <= total).sort((x, y) => x - y);
}

describe('a crashed backup', () => {
  it.each([
    ['none', 4],
    ['last', 3],
  ] as const)('leaves a repository that verifies, and the next backup completes it (un-synced writes kept: %s)', async (keep, n) => {
    const dry = run('create', freshRepo(`dry-${keep}`), 0, keep);
    expect(dry.status, dry.stderr).toBe(0);
    expect(dry.events).toBeGreaterThan(DATA_CHUNKS * 3);
    for (const at of crashPoints(dry.events, n)) {
      const repo = freshRepo(`create-${keep}-${at}`);
      const killed = run('create', repo, at, keep);
      expect(killed.signal, `crash at ${at}: ${killed.stderr}`).toBe('SIGKILL');
      const v = await verifyBackup(repo);
      expect(v.problems, `crash at ${at}`).toEqual([]);
      const before = (await listBackups(repo)).points.length;
      expect(before).toBeLessThanOrEqual(1);
      expect(indexState(repo).stale, `crash at ${at}`).toEqual([]);
      const again = await createBackup(disk, repo);
      expect(again.chunks).toBe(DATA_CHUNKS);
      // The point the crashed run committed (if it did) is the parent, whatever the index held.
      expect(again.parent).toBe(before === 1 ? (await listBackups(repo)).points[0]!.id : null);
      expect(indexState(repo).complete, `crash at ${at}`).toBe(true);
      // Chunks a crashed run made durable are reused, not written again.
      expect(again.newChunks).toBe(DATA_CHUNKS - v.chunks);
      expect((await verifyBackup(repo)).ok).toBe(true);
      if (at === dry.events) {
        // Once per run (it is the slow part): the completed point restores the disk.
        const out = join(repo, '..', `out-${keep}-${at}`);
        mkdirSync(out);
        await restoreBackup(repo, 'latest', join(out, 'r.vmdk'));
        execFileSync('qemu-img', ['compare', '-q', disk, join(out, 'r.vmdk')]);
        rmSync(out, { recursive: true });
      }
      rmSync(repo, { recursive: true });
    }
  });
});

describe('a crashed prune', () => {
  it('leaves every remaining point whole', async () => {
    const base = freshRepo('prune-base');
    const other = await encryptedDisk(tmp.dir, 'other', 'monolithicSparse', 4 * MiB, [{ at: 0, data: patternBytes(3 * MiB, 62) }]);
    await createBackup(other, base, { history: 'h' });
    await createBackup(disk, base, { history: 'h' });
    const dryRepo = join(tmp.dir, 'prune-dry');
    execFileSync('cp', ['-a', base, dryRepo]);
    const dry = run('prune', dryRepo, 0, 'none');
    expect(dry.status, dry.stderr).toBe(0);
    for (const at of crashPoints(dry.events, 3)) {
      const repo = join(tmp.dir, `prune-${at}`);
      execFileSync('cp', ['-a', base, repo]);
      const killed = run('prune', repo, at, 'none');
      expect(killed.signal, `crash at ${at}: ${killed.stderr}`).toBe('SIGKILL');
      const v = await verifyBackup(repo);
      expect(v.problems, `crash at ${at}`).toEqual([]);
      const latest = (await listBackups(repo)).points.at(-1)!;
      expect(latest.source).toBe(disk);
      expect(indexState(repo).stale, `crash at ${at}`).toEqual([]);
      // Finishing the prune leaves exactly the newest point and its chunks.
      const done = await pruneBackup(repo, { keepLast: 1 });
      expect(done.keptPoints).toBe(1);
      expect((await verifyBackup(repo)).chunks).toBe(DATA_CHUNKS);
      expect(indexState(repo).complete, `crash at ${at}`).toBe(true);
      rmSync(repo, { recursive: true });
    }
  });
});
