// Several `vmseal backup create` processes into one repository at once (they share its lock): every
// point is committed and listed, and the point index — which each of them updates — ends up naming
// every point, as the manifests say (src/backup/point-index.ts: each adds its point under the index
// lock to what the index holds then; before, each wrote what it had read at its start plus its own
// point, and the last writer dropped the others').
import { mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { initRepository } from '../../src/backup/index.js';
import { parseManifest } from '../../src/backup/manifest.js';
import { entryOf, POINT_INDEX_FILE } from '../../src/backup/point-index.js';
import { patternBytes, tempDir } from '../disk/helpers.js';
import { cleanEnv, json, vmseal } from '../cli/run-cli.js';
import { encryptedDisk } from './helpers.js';

const MiB = 1 << 20;
const PROCESSES = 6;
const ROUNDS = 2;
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-backup-concurrent-');
});
afterAll(() => tmp.cleanup());

/** The index file's point ids and, for each, what the manifests say it should hold. */
function indexAgainstManifests(repo: string, repoId: string): { indexed: unknown[]; expected: unknown[] } {
  const indexed = (JSON.parse(readFileSync(join(repo, POINT_INDEX_FILE), 'utf8')) as { points: unknown[] }).points;
  const expected = readdirSync(join(repo, 'points'))
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((f) => {
      const { id, history, name, line, ...rest } = entryOf(parseManifest(readFileSync(join(repo, 'points', f), 'utf8'), f.slice(0, -5), repoId));
      return [id, history, name, line, rest];
    });
  return { indexed, expected };
}

describe('concurrent backups into one repository', () => {
  it('commit and list every point, and leave an index that names them all', async () => {
    const dir = join(tmp.dir, 'c');
    mkdirSync(dir);
    const disks: string[] = [];
    for (let i = 0; i < PROCESSES; i++) {
      disks.push(await encryptedDisk(dir, `d${i}`, 'monolithicSparse', 4 * MiB, [{ at: i * 512 * 1024, data: patternBytes(MiB, 40 + i) }]));
    }
    const repo = join(dir, 'repo');
    const { id } = await initRepository(repo);
    const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home') });
    const made: string[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const runs = await Promise.all(disks.map((d, i) => vmseal(['backup', 'create', d, repo, '--name', `r${round}-d${i}`, '--json'], env)));
      for (const r of runs) {
        expect(r.code, r.stderr).toBe(0);
        made.push(json(r).point as string);
      }
      // Read straight from the file: not through a reader, which would repair it.
      const { indexed, expected } = indexAgainstManifests(repo, id);
      expect(expected.map((e) => (e as string[])[0]).sort()).toEqual([...made].sort());
      expect(indexed, `round ${round}`).toEqual(expected);
    }
    const list = json(await vmseal(['backup', 'list', repo, '--json'], env));
    expect((list.points as Array<{ id: string }>).map((p) => p.id).sort()).toEqual([...made].sort());
    // Each disk's second point continues its first (its own history).
    for (let i = 0; i < PROCESSES; i++) {
      const mine = (list.points as Array<{ name: string; parent: string | null; id: string }>).filter((p) => p.name.endsWith(`-d${i}`));
      expect(mine.map((p) => p.name)).toEqual([`r0-d${i}`, `r1-d${i}`]);
      expect(mine[1]!.parent).toBe(mine[0]!.id);
    }
  });
});
