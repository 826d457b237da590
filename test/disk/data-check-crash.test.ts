// The unit-0 update protocol under simulated power loss (test/helpers/crash-fs.ts): at every
// durability-relevant call of three unit-0 writes, un-synced writes are lost (or only the last of
// each file kept); the disk must then open — one of the data check's slots matches unit 0 — and
// unit 0 must hold one of the values written, whole. `npm test` visits the calls
// test/helpers/points.ts samples (each kind's first and last, the edges, a few between); `npm run
// fuzz` every call.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { cpSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { bundleFixture } from '../helpers/bundle.js';
import { runCrashChild } from '../helpers/crash-run.js';
import { crashPoints } from '../helpers/points.js';
import { createEncryptedDisk, openDisk } from '../../src/disk/index.js';
import { phraseLocker, tempDir } from './helpers.js';

let tmp: ReturnType<typeof tempDir>;
let child: string;

beforeAll(async () => {
  tmp = tempDir('vmseal-unit0-crash-');
  child = await bundleFixture(new URL('./fixtures/unit0-child.ts', import.meta.url));
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

function run(folder: string, disk: string, crashAt: number, keep: string) {
  return runCrashChild(child, [disk], { root: folder, crashAt, keep });
}

describe.each(['monolithicSparse', 'monolithicFlat'] as const)('%s: a power loss during unit-0 writes', (subformat) => {
  it.each(['none', 'last'])('leaves a disk that opens with a whole unit 0 (un-synced writes kept: %s)', async (keep) => {
    const pristine = join(tmp.dir, `${subformat}-${keep}-pristine`);
    mkdirSync(pristine);
    const name = 'd.vmdk';
    const d = await createEncryptedDisk(join(pristine, name), { capacity: 1 << 20, subformat, lockers: [phraseLocker('pw')] });
    await d.write(0, Buffer.alloc(4096, 0xaa));
    await d.close();

    const full = join(tmp.dir, `${subformat}-${keep}-full`);
    cpSync(pristine, full, { recursive: true });
    const total = run(full, join(full, name), 0, keep);
    expect(total.status, total.stderr).toBe(0);
    expect(total.events).toBeGreaterThan(4);

    for (const at of crashPoints(total.events, { spread: 2, kinds: total.kinds, seed: subformat.length })) {
      const folder = join(tmp.dir, `${subformat}-${keep}-${at}`);
      cpSync(pristine, folder, { recursive: true });
      const r = run(folder, join(folder, name), at, keep);
      expect(r.signal, `crash point ${at}: ${r.stderr}`).toBe('SIGKILL');
      const disk = await openDisk(join(folder, name), { keys: { passphrase: 'pw' }, readOnly: true }).catch((err: unknown) => {
        throw new Error(`crash point ${at} of ${total.events}: ${String(err)}`);
      });
      const unit0 = await disk.read(0, 4096);
      await disk.close();
      expect([0xaa, 0xbb, 0xcc, 0xdd], `crash point ${at}`).toContain(unit0[0]);
      expect(unit0.equals(Buffer.alloc(4096, unit0[0])), `crash point ${at}: unit 0 is whole`).toBe(true);
      rmSync(folder, { recursive: true, force: true });
    }
  });
});
