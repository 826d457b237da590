// The point index (`REPO/points-index.json`, src/backup/point-index.ts) is a cache: `backup create`
// finds its parent, `latest` / names resolve and `backup list` lists from it without parsing every manifest, and whatever
// state it is in — missing, damaged, another repository's, older than the manifests (a backup killed
// before it updated the index), listing points a prune removed — the answer is the manifests' own.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, listBackups, pruneBackup, restoreBackup } from '../../src/backup/index.js';
import { parseManifest } from '../../src/backup/manifest.js';
import { entryOf, POINT_INDEX_FILE, POINT_INDEX_LOCK, POINT_INDEX_VERSION } from '../../src/backup/point-index.js';
import { acquireFileLock } from '../../src/util/lock.js';
import { summarize } from '../../src/backup/point-summary.js';
import { resolvePoint } from '../../src/backup/points.js';
import { openRepository } from '../../src/backup/repository.js';
import { openDisk } from '../../src/disk/index.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { encryptedDisk, PASS } from './helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let n = 0;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-index-');
});
afterAll(() => tmp.cleanup());

async function writeAt(path: string, at: number, data: Buffer): Promise<void> {
  const d = await openDisk(path, { keys: { passphrase: PASS } });
  try {
    await d.write(at, data);
  } finally {
    await d.close();
  }
}

/** A repository and a small encrypted disk in a new folder. */
async function setup(): Promise<{ dir: string; disk: string; repo: string; id: string }> {
  const dir = join(tmp.dir, `case-${n++}`);
  mkdirSync(dir);
  const disk = await encryptedDisk(dir, 'd', 'monolithicSparse', 8 * MiB, [{ at: 0, data: patternBytes(2 * MiB, 71) }]);
  const repo = join(dir, 'repo');
  const { id } = await initRepository(repo);
  return { dir, disk, repo, id };
}

const indexPath = (repo: string): string => join(repo, POINT_INDEX_FILE);

/** The index file's entries as [id, history, name, line, {the rest of the list summary}], or null when it is absent. */
function indexed(repo: string): unknown[] | null {
  try {
    return (JSON.parse(readFileSync(indexPath(repo), 'utf8')) as { points: unknown[] }).points;
  } catch {
    return null;
  }
}

/** What the index should hold: each manifest's entry, oldest first. */
function fromManifests(repo: string, repoId: string): unknown[] {
  return readdirSync(join(repo, 'points'))
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const id = f.slice(0, -5);
      const { id: eid, history, name, line, ...rest } = entryOf(parseManifest(readFileSync(join(repo, 'points', f), 'utf8'), id, repoId));
      return [eid, history, name, line, rest];
    });
}

describe('the point index', () => {
  it('is written by create, holds each point’s history, name and lineage line, and create takes its parent from it', async () => {
    const { disk, repo, id, dir } = await setup();
    const p1 = await createBackup(disk, repo, { name: 'first' });
    const p2 = await createBackup(disk, repo, { history: 'other' });
    const p3 = await createBackup(disk, repo);
    expect(p3.parent).toBe(p1.point); // p2 is of another history
    // A restored disk's point carries its lineage line in the index.
    const out = join(dir, 'restored.vmdk');
    await restoreBackup(repo, 'first', out);
    const p4 = await createBackup(out, repo);
    expect(p4.parent).toBe(p1.point);
    const idx = indexed(repo)!;
    expect(idx).toEqual(fromManifests(repo, id));
    expect(idx.map((e) => (e as unknown[])[0])).toEqual([p1.point, p2.point, p3.point, p4.point]);
    expect((idx[3] as string[])[3]).toMatch(new RegExp(`^${id}:${p1.point}:[0-9a-f]{12}$`));
  });

  it('spares create and `latest` from reading the other manifests: a damaged old manifest does not stop them', async () => {
    const { disk, repo } = await setup();
    const p1 = await createBackup(disk, repo);
    const p2 = await createBackup(disk, repo);
    // p1's manifest is damaged after it was indexed: only verify (which reads everything) needs it.
    writeFileSync(join(repo, 'points', `${p1.point}.json`), '{"damaged": tru');
    const p3 = await createBackup(disk, repo);
    expect(p3.parent).toBe(p2.point);
    expect((await resolvePoint(await openRepository(repo), 'latest')).id).toBe(p3.point);
  });

  it('missing, damaged or of another repository: rebuilt from the manifests', async () => {
    const { disk, repo, id } = await setup();
    await createBackup(disk, repo, { name: 'a' });
    const p2 = await createBackup(disk, repo, { name: 'b' });
    const other = await setup();
    await createBackup(other.disk, other.repo);
    const states: Array<[string, () => void]> = [
      ['missing', () => undefined],
      ['empty', () => writeFileSync(indexPath(repo), '')],
      ['not JSON', () => writeFileSync(indexPath(repo), '\u0000\u0001garbage')],
      ['another repository', () => copyFileSync(indexPath(other.repo), indexPath(repo))],
      [
        'a bad entry',
        () =>
          writeFileSync(
            indexPath(repo),
            JSON.stringify({ format: 'vmseal-backup-index', version: POINT_INDEX_VERSION, repository: id, points: [[p2.point, 'h', 'b', 42, {}]] }),
          ),
      ],
      [
        'a bad summary',
        () => {
          const points = fromManifests(repo, id) as Array<[string, string, string | null, string, Record<string, unknown>]>;
          points[0]![4] = { ...points[0]![4], chunks: -1 };
          writeFileSync(indexPath(repo), JSON.stringify({ format: 'vmseal-backup-index', version: POINT_INDEX_VERSION, repository: id, points }));
        },
      ],
      // Version 1 kept no summaries: its file is rebuilt as the current version.
      ['version 1', () => writeFileSync(indexPath(repo), JSON.stringify({ format: 'vmseal-backup-index', version: 1, repository: id, points: [] }))],
      // Sized before it is read: a huge file is not loaded, and a FIFO does not hang the open.
      ['larger than 64 MiB', () => (writeFileSync(indexPath(repo), '{'), truncateSync(indexPath(repo), (64 << 20) + 1))],
      ['a FIFO', () => execFileSync('mkfifo', [indexPath(repo)])],
    ];
    let last = p2.point;
    for (const [what, damage] of states) {
      rmSync(indexPath(repo), { force: true });
      damage();
      const r = await openRepository(repo);
      expect((await resolvePoint(r, 'a')).name, what).toBe('a');
      expect(indexed(repo), what).toEqual(fromManifests(repo, id));
      rmSync(indexPath(repo), { force: true });
      damage();
      const p = await createBackup(disk, repo);
      expect(p.parent, what).toBe(last);
      last = p.point;
      expect(indexed(repo), what).toEqual(fromManifests(repo, id));
    }
  });

  it('older than the manifests (a backup killed before it updated the index): the newest point is still the parent', async () => {
    const { disk, repo, id } = await setup();
    await createBackup(disk, repo);
    const old = readFileSync(indexPath(repo));
    await writeAt(disk, 4 * MiB, patternBytes(MiB, 72));
    const p2 = await createBackup(disk, repo, { name: 'newest' });
    writeFileSync(indexPath(repo), old); // as if p2's create had been killed between its manifest and the index
    expect(indexed(repo)!.length).toBe(1);
    expect((await resolvePoint(await openRepository(repo), 'newest')).id).toBe(p2.point);
    const p3 = await createBackup(disk, repo);
    expect(p3.parent).toBe(p2.point);
    expect(p3.newChunks).toBe(0);
    expect(indexed(repo)).toEqual(fromManifests(repo, id));
  });

  it('is kept true by prune; an index listing pruned points (a prune killed before it) is corrected', async () => {
    const { disk, repo, id } = await setup();
    const p1 = await createBackup(disk, repo, { name: 'keep' });
    const p2 = await createBackup(disk, repo, { name: 'gone' });
    const before = readFileSync(indexPath(repo));
    const leftover = `${indexPath(repo)}.tmp-999999-0123456789ab`; // an index writer killed before its rename
    writeFileSync(leftover, '{"format":');
    const pr = await pruneBackup(repo, { keepLast: 1 });
    expect(readdirSync(repo)).not.toContain(basename(leftover));
    expect(pr.removedPoints).toEqual([p1.point]);
    expect(indexed(repo)).toEqual(fromManifests(repo, id));
    expect(indexed(repo)!.length).toBe(1);
    // The index from before the prune names p1, whose manifest is gone: it is not used.
    writeFileSync(indexPath(repo), before);
    await expect(resolvePoint(await openRepository(repo), 'keep')).rejects.toMatchObject({ code: 'ERR_BACKUP_NO_POINT' });
    expect((await resolvePoint(await openRepository(repo), 'latest')).id).toBe(p2.point);
    expect(indexed(repo)).toEqual(fromManifests(repo, id));
    const p3 = await createBackup(disk, repo);
    expect(p3.parent).toBe(p2.point);
  });

  it('lists the points from the index: a manifest it covers is not read, and the output is the manifests’ own', async () => {
    const { disk, repo, id, dir } = await setup();
    const made: string[] = [];
    for (let i = 0; i < 24; i++) {
      if (i % 6 === 5) await writeAt(disk, (i % 8) * MiB, patternBytes(MiB, 100 + i));
      made.push((await createBackup(disk, repo, i % 4 === 0 ? { name: `n${i}` } : i % 4 === 1 ? { history: 'other' } : {})).point);
    }
    // A point of a restored disk (a lineage line) and of a plain raw image (another subformat, plain).
    await restoreBackup(repo, made[0]!, join(dir, 'restored.vmdk'));
    made.push((await createBackup(join(dir, 'restored.vmdk'), repo)).point);
    const raw = join(dir, 'plain.raw');
    writeFileSync(raw, patternBytes(3 * MiB, 9));
    made.push((await createBackup(raw, repo, { allowPlain: true, format: 'raw' })).point);
    const manifests = readdirSync(join(repo, 'points'))
      .sort()
      .map((f) => summarize(parseManifest(readFileSync(join(repo, 'points', f), 'utf8'), f.slice(0, -5), id)));
    const listed = await listBackups(repo);
    expect(listed).toEqual({ repository: id, points: manifests });
    expect(listed.points.map((p) => p.id)).toEqual(made);
    // The same fields in the same order (`backup list --json` prints them so).
    expect(listed.points.map((p) => Object.keys(p))).toEqual(manifests.map((p) => Object.keys(p)));
    // Every manifest but the newest damaged: the index covers them, so list does not read them (it
    // used to parse each, and stop at the first with ERR_BACKUP_MANIFEST).
    const saved = new Map<string, Buffer>();
    for (const p of made.slice(0, -1)) {
      const file = join(repo, 'points', `${p}.json`);
      saved.set(file, readFileSync(file));
      writeFileSync(file, '{"damaged": tru');
    }
    expect(await listBackups(repo)).toEqual(listed);
    // Stale or missing, it falls back to the manifests: the one it lacks is read and listed…
    const index = readFileSync(indexPath(repo), 'utf8');
    const lacking = JSON.parse(index) as { points: unknown[] };
    lacking.points.pop();
    writeFileSync(indexPath(repo), JSON.stringify(lacking));
    expect(await listBackups(repo)).toEqual(listed);
    expect(readFileSync(indexPath(repo), 'utf8')).toBe(index); // and the index repaired
    // …and without the index every manifest is read again: a damaged one stops list.
    rmSync(indexPath(repo));
    await expect(listBackups(repo)).rejects.toMatchObject({ code: 'ERR_BACKUP_MANIFEST' });
    for (const [file, text] of saved) writeFileSync(file, text);
    expect(await listBackups(repo)).toEqual(listed);
    expect(indexed(repo)).toEqual(fromManifests(repo, id));
  });

  it('is written only under the index lock: a reader leaves a held lock alone, a backup waits for it', async () => {
    const { disk, repo, id } = await setup();
    const p1 = await createBackup(disk, repo);
    rmSync(indexPath(repo));
    const held = await acquireFileLock(join(repo, POINT_INDEX_LOCK), { mode: 'exclusive' });
    let created: Promise<Awaited<ReturnType<typeof createBackup>>> | undefined;
    try {
      // The reader answers from the manifests, and does not write the index while another holds the lock.
      expect((await listBackups(repo)).points.map((p) => p.id)).toEqual([p1.point]);
      expect(indexed(repo)).toBeNull();
      // A backup commits its point, then waits for the lock to add it to the index.
      created = createBackup(disk, repo);
      const manifests = (): string[] => readdirSync(join(repo, 'points')).filter((f) => f.endsWith('.json'));
      for (let i = 0; i < 400 && manifests().length < 2; i++) await new Promise((r) => setTimeout(r, 25));
      expect(manifests()).toHaveLength(2);
      expect(indexed(repo)).toBeNull();
    } finally {
      held.release();
    }
    const p2 = await created!;
    expect(indexed(repo)).toEqual(fromManifests(repo, id));
    expect(indexed(repo)!.map((e) => (e as string[])[0])).toEqual([p1.point, p2.point]);
  });
});
