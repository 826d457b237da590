// A `backup rewrap --remove-locker` killed at any point (a simulated power loss by the fault-injecting
// file layer, then SIGKILL): every manifest is whole, either with the locker or without it, the
// repository verifies, and running rewrap again finishes the job.
import { spawnSync, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createBackup, initRepository, rewrapBackup, verifyBackup } from '../../src/backup/index.js';
import { createEncryptedDisk, openDisk } from '../../src/disk/index.js';
import { describeKeySafe } from '../../src/keys/index.js';
import { Descriptor } from '../../src/vmdk/index.js';
import { patternBytes, phraseLocker, tempDir } from '../disk/helpers.js';
import { bundleFixture } from '../helpers/bundle.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let child: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-backup-crash-rewrap-');
  child = await bundleFixture(new URL('./fixtures/rewrap-child.ts', import.meta.url));
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

/** Locker counts of every manifest's KeySafe, by point id. */
function lockerCounts(repo: string): number[] {
  return readdirSync(join(repo, 'points'))
    .sort()
    .map((f) => {
      const m = JSON.parse(readFileSync(join(repo, 'points', f), 'utf8')) as { layers: Array<{ descriptor: string }> };
      return describeKeySafe(Descriptor.parse(m.layers[0]!.descriptor).get('encryption.keySafe')!).length;
    });
}

describe('a crashed backup rewrap', () => {
  it('leaves each manifest whole, old or new; a second run finishes', async () => {
    const disk = join(tmp.dir, 'd.vmdk');
    const made = await createEncryptedDisk(disk, { capacity: 4 * MiB, subformat: 'monolithicSparse', lockers: [phraseLocker('kept'), phraseLocker('leaked')] });
    await made.write(0, patternBytes(MiB, 5));
    await made.close();
    const base = join(tmp.dir, 'base');
    await initRepository(base);
    await createBackup(disk, base);
    const d = await openDisk(disk, { keys: { passphrase: 'kept' } });
    await d.write(2 * MiB, patternBytes(4096, 6));
    await d.close();
    await createBackup(disk, base);
    const leakedId = describeKeySafe(
      Descriptor.parse(
        (JSON.parse(readFileSync(join(base, 'points', readdirSync(join(base, 'points'))[0]!), 'utf8')) as { layers: Array<{ descriptor: string }> }).layers[0]!
          .descriptor,
      ).get('encryption.keySafe')!,
    )[1]!.id!;
    const run = (repo: string, at: number) => {
      const r = spawnSync(process.execPath, [child, repo], {
        env: { ...process.env, CRASH_ROOT: repo, CRASH_AT: String(at), CRASH_KEEP: 'none', REMOVE: leakedId, PASSPHRASE: 'kept' },
        encoding: 'utf8',
      });
      return { signal: r.signal, status: r.status, stderr: r.stderr, events: Number(/events=(\d+)/.exec(r.stdout)?.[1] ?? 0) };
    };
    const dryRepo = join(tmp.dir, 'dry');
    execFileSync('cp', ['-a', base, dryRepo]);
    const dry = run(dryRepo, 0);
    expect(dry.status, dry.stderr).toBe(0);
    expect(lockerCounts(dryRepo)).toEqual([1, 1]);
    for (let at = 1; at <= dry.events; at++) {
      const repo = join(tmp.dir, `at-${at}`);
      execFileSync('cp', ['-a', base, repo]);
      const killed = run(repo, at);
      expect(killed.signal, `crash at ${at}: ${killed.stderr}`).toBe('SIGKILL');
      for (const n of lockerCounts(repo)) expect([1, 2], `crash at ${at}`).toContain(n);
      expect((await verifyBackup(repo)).problems, `crash at ${at}`).toEqual([]);
      await rewrapBackup(repo, { removeLocker: leakedId, keys: { passphrase: 'kept' } });
      expect(lockerCounts(repo), `crash at ${at}`).toEqual([1, 1]);
      rmSync(repo, { recursive: true });
    }
  });
});
