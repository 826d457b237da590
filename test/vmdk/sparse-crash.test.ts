// Crash-consistent grain allocation under simulated power loss (test/helpers/crash-fs.ts): a child
// process writes new grains, new grain tables and overwrites in batches, with a flush between batches,
// through a monolithicSparse and a twoGbMaxExtentSparse disk, plain and encrypted. At every
// durability-relevant call the child loses every write not made durable (or keeps only the last one
// of each file) and dies. Afterwards `qemu-img check` passes, the disk opens, every flushed batch
// reads back exactly, and every grain reads as one of the states the batches since then left —
// never bytes no write put there (a grain-table entry pointing at a grain whose data was lost).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { createEncryptedDisk, openDisk } from '../../src/disk/index.js';
import { createDisk } from '../../src/vmdk/index.js';
import { phraseLocker } from '../disk/helpers.js';
import { CAPACITY, EXTENT, GRAIN, BATCHES, states } from './fixtures/sparse-crash-scenario.js';
import { tempDir, tryRun } from './helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
let tmp: ReturnType<typeof tempDir>;
let child: string;
const expected = states();

beforeAll(async () => {
  tmp = tempDir();
  // Bundled inside the package (the addon is found from the package root above the script).
  const cache = join(here, '..', '..', 'node_modules', '.cache', 'vmseal-test');
  mkdirSync(cache, { recursive: true });
  child = join(cache, `sparse-crash-child-${process.pid}-${Math.random().toString(36).slice(2, 8)}.mjs`);
  await build({
    entryPoints: [join(here, 'fixtures', 'sparse-crash-child.ts')],
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    outfile: child,
    logLevel: 'silent',
  });
});
afterAll(() => {
  tmp?.cleanup();
  if (child) rmSync(child, { force: true });
});

function run(folder: string, disk: string, crashAt: number, keep: string, passphrase: string | undefined) {
  const r = spawnSync(process.execPath, [child, disk, ...(passphrase ? [passphrase] : [])], {
    env: { ...process.env, CRASH_ROOT: folder, CRASH_AT: String(crashAt), CRASH_KEEP: keep },
    encoding: 'utf8',
  });
  const flushed = [...r.stdout.matchAll(/flushed=(\d+)/g)].map((m) => Number(m[1]));
  return {
    signal: r.signal,
    status: r.status,
    stderr: r.stderr,
    flushed: flushed.length ? flushed[flushed.length - 1] : 0,
    events: Number(/events=(\d+)/.exec(r.stdout)?.[1] ?? 0),
  };
}

const cases = [
  { subformat: 'monolithicSparse', encrypted: false },
  { subformat: 'twoGbMaxExtentSparse', encrypted: false },
  { subformat: 'monolithicSparse', encrypted: true },
  { subformat: 'twoGbMaxExtentSparse', encrypted: true },
] as const;

describe.each(cases)('$subformat (encrypted: $encrypted): a power loss while grains are allocated', ({ subformat, encrypted }) => {
  it.each(['none', 'last'])('leaves a disk that checks, opens and holds every flushed write (un-synced writes kept: %s)', async (keep) => {
    const tag = `${subformat}-${encrypted ? 'enc' : 'plain'}-${keep}`;
    const pristine = join(tmp.dir, `${tag}-pristine`);
    mkdirSync(pristine);
    const name = 'd.vmdk';
    const passphrase = encrypted ? 'pw' : undefined;
    const opts = { capacity: CAPACITY, subformat, grainSize: GRAIN, ...(subformat === 'twoGbMaxExtentSparse' ? { maxExtentSize: EXTENT } : {}) };
    const created = encrypted
      ? await createEncryptedDisk(join(pristine, name), { ...opts, lockers: [phraseLocker('pw')] })
      : await createDisk(join(pristine, name), opts);
    await created.close();

    const full = join(tmp.dir, `${tag}-full`);
    cpSync(pristine, full, { recursive: true });
    const total = run(full, join(full, name), 0, keep, passphrase);
    expect(total.status, total.stderr).toBe(0);
    expect(total.flushed).toBe(BATCHES.length);
    expect(total.events).toBeGreaterThan(10);
    rmSync(full, { recursive: true, force: true });

    for (let at = 1; at <= total.events; at++) {
      const where = `crash point ${at} of ${total.events}`;
      const folder = join(tmp.dir, `${tag}-${at}`);
      cpSync(pristine, folder, { recursive: true });
      const r = run(folder, join(folder, name), at, keep, passphrase);
      expect(r.signal, `${where}: ${r.stderr}`).toBe('SIGKILL');
      const check = tryRun('qemu-img', ['check', '-f', 'vmdk', join(folder, name)]);
      expect(check.status, `${where}: qemu-img check\n${check.stdout}${check.stderr}`).toBe(0);
      const disk = await openDisk(join(folder, name), { readOnly: true, ...(passphrase ? { keys: { passphrase } } : {}) }).catch((err: unknown) => {
        throw new Error(`${where}: ${String(err)}`);
      });
      const content = await disk.read(0, CAPACITY);
      await disk.close();
      // Every grain: the state of the last flushed batch or of a later one (never older, never other bytes).
      for (let g = 0; g < CAPACITY / GRAIN; g++) {
        const got = content.subarray(g * GRAIN, (g + 1) * GRAIN);
        const ok = expected.slice(r.flushed).some((s) => s.subarray(g * GRAIN, (g + 1) * GRAIN).equals(got));
        if (!ok) expect.fail(`${where} (batches flushed: ${r.flushed}): grain ${g} holds bytes that no flushed or later state has`);
      }
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
