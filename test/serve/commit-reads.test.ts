// Reads during a live snapshot commit (NbdHost.commit): writes wait, but reads go on through the
// chain while the child's grains are copied into the parent, and every read returns the merged
// view — the same bytes before, during and after the commit. A read is counted as "during the copy"
// when its reply arrives while the commit's journal exists (it is written before the copy and removed
// after the child's files): before this change reads waited for the whole commit and none did.
// A child of several files (whose handles may be reopened by name, which fails once the commit
// removed them) is still committed with reads held, and a read sent during it gets the merged view.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, plaintextOf, run, startHost } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const MiB = 1 << 20;
const CAPACITY = 32 * MiB;
/** Written into the child after the snapshot: what the commit copies. */
const CHILD_DATA = 20 * MiB;

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-serve-commit-reads-');
});
afterAll(() => tmp?.cleanup());

describe('reads during a live commit', () => {
  it('go on while the child is copied, and read the merged view throughout', async () => {
    const dir = join(tmp.dir, 'reads');
    mkdirSync(dir, { mode: 0o700 });
    const model = Buffer.alloc(CAPACITY);
    const inBase = randomBytes(12 * MiB);
    inBase.copy(model);
    const disk = await encryptedDisk(dir, 'vm', { subformat: 'monolithicSparse', capacity: CAPACITY, content: inBase });
    const { host, socket } = await startHost(dir, [{ path: disk }]);
    const c = await RawClient.connect(socket);
    try {
      await c.go('vm');
      const { path: child } = await host.snapshot('vm');
      // The child overwrites half of the base's data and writes beyond it: both kinds of grains move.
      for (let at = 8 * MiB; at < 8 * MiB + CHILD_DATA; at += MiB) {
        const data = randomBytes(MiB);
        expect((await c.request(CMD.WRITE, at, MiB, 0, data)).error).toBe(0);
        data.copy(model, at);
      }
      const journal = `${child}.vmseal-journal`;

      let done = false;
      const commit = host.commit('vm').finally(() => (done = true));
      let reads = 0;
      let duringCopy = 0;
      let mismatches = 0;
      for (let i = 0; !done; i++) {
        const at = (i % (CAPACITY / MiB)) * MiB;
        const r = await c.request(CMD.READ, at, MiB);
        expect(r.error).toBe(0);
        reads++;
        if (existsSync(journal)) duringCopy++;
        if (!r.data.equals(model.subarray(at, at + MiB))) mismatches++;
      }
      const result = await commit;
      expect(result).toMatchObject({ path: disk, removed: child, bytesMoved: CHILD_DATA });
      expect(mismatches, `reads that did not return the merged view (of ${reads})`).toBe(0);
      expect(duringCopy, `reads answered while the child was being copied (of ${reads})`).toBeGreaterThan(0);
      // After the commit: the parent alone serves the same bytes.
      for (let at = 0; at < CAPACITY; at += MiB) {
        const r = await c.request(CMD.READ, at, MiB);
        expect(r.error).toBe(0);
        expect(r.data.equals(model.subarray(at, at + MiB)), `read at ${at} after the commit`).toBe(true);
      }
      expect(existsSync(child)).toBe(false);
    } finally {
      c.close();
      await host.close();
    }
    expect((await plaintextOf(disk)).equals(model)).toBe(true);
  }, 60_000);

  it('a child of several files (qemu-img twoGbMaxExtentSparse) is committed with reads held, as before', async () => {
    const dir = join(tmp.dir, 'two-gb');
    mkdirSync(dir, { mode: 0o700 });
    const [base, child] = ['base.vmdk', 'child.vmdk'].map((f) => join(dir, f));
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', base, String(8 * MiB)]);
    await run('qemu-io', ['-f', 'vmdk', '-c', 'write -P 0x11 0 4M', base]);
    await run('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', '-b', base, '-F', 'vmdk', child]);
    const { host, socket } = await startHost(dir, [{ path: child, name: 'vm' }]);
    const c = await RawClient.connect(socket);
    const model = Buffer.alloc(8 * MiB);
    model.fill(0x11, 0, 4 * MiB);
    try {
      await c.go('vm');
      const data = randomBytes(2 * MiB);
      expect((await c.request(CMD.WRITE, 3 * MiB, data.length, 0, data)).error).toBe(0);
      data.copy(model, 3 * MiB);
      const reading = c.request(CMD.READ, 0, 8 * MiB);
      const result = await host.commit('vm');
      expect(result).toMatchObject({ path: base, removed: child, bytesMoved: 2 * MiB });
      const r = await reading;
      expect(r.error).toBe(0);
      expect(r.data.equals(model)).toBe(true);
      const after = await c.request(CMD.READ, 0, 8 * MiB);
      expect(after.data.equals(model)).toBe(true);
    } finally {
      c.close();
      await host.close();
    }
    expect(existsSync(child)).toBe(false);
  }, 60_000);
});
