// Seeded mutation fuzzing of descriptors, sparse headers, grain directories/tables and stream markers.
// Property: opening, reading, mapping and writing a mutated image either works or throws a
// VmdkFormatError — never another exception, a hang, or an unbounded allocation.
// Budget and seed: VMSEAL_FUZZ_MS (default 6000, split over the properties), VMSEAL_FUZZ_SEED.
// `node scripts/fuzz-vmdk.mjs` runs this file with a long budget and a random seed.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import fc from 'fast-check';
import { readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { createDisk, openDisk, Descriptor, VmdkFormatError } from '../../src/vmdk/index.js';
import { patternData, tempDir } from './helpers.js';
import { buildCowd, buildSeSparse, writeEsxDisk, type BuiltExtent } from './esx-sparse.js';

const BUDGET_MS = Number(process.env.VMSEAL_FUZZ_MS ?? 6_000);
const SEED = Number(process.env.VMSEAL_FUZZ_SEED ?? 20261128);
const PROPERTIES = 5;
const perProperty = Math.max(1000, Math.floor(BUDGET_MS / PROPERTIES));
const fcOptions = { seed: SEED, numRuns: 1_000_000, interruptAfterTimeLimit: perProperty, markInterruptAsFailure: false, endOnFailure: true };

let dir: string;
let cleanup: () => void;
const corpus: Record<string, Buffer> = {};
const KiB = 1024;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir());
  const sparse = join(dir, 'sparse.vmdk');
  let d = await createDisk(sparse, { capacity: 512 * KiB, subformat: 'monolithicSparse', grainSize: 4096 });
  await d.write(1000, patternData(40 * KiB, 1));
  await d.write(300 * KiB, patternData(9 * KiB, 2));
  await d.close();
  corpus.sparse = readFileSync(sparse);
  const stream = join(dir, 'stream.vmdk');
  d = await createDisk(stream, { capacity: 512 * KiB, subformat: 'streamOptimized', grainSize: 4096 });
  await d.write(0, patternData(100 * KiB, 3));
  await d.close();
  corpus.stream = readFileSync(stream);
  const flat = join(dir, 'flat.vmdk');
  d = await createDisk(flat, { capacity: 64 * KiB, subformat: 'twoGbMaxExtentFlat', maxExtentSize: 32 * KiB, descriptorLines: [['ddb.encryption.x', 'y']] });
  await d.close();
  corpus.descriptor = readFileSync(flat);
});
afterAll(() => cleanup());

/** Where the interesting bytes are: header, descriptor, directories, tables, first grain markers. */
function hotRanges(img: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = [[0, 512]];
  const gd = Number(img.readBigUInt64LE(56) & 0xffffffffn);
  const rgd = Number(img.readBigUInt64LE(48) & 0xffffffffn);
  const overHead = Number(img.readBigUInt64LE(64) & 0xffffffffn);
  out.push([512, Math.min(img.length, 1024)]);
  for (const s of [gd, rgd]) if (s > 0 && s * 512 < img.length) out.push([s * 512, Math.min(img.length, s * 512 + 4096)]);
  if (overHead * 512 < img.length) out.push([overHead * 512, Math.min(img.length, overHead * 512 + 64)]);
  out.push([Math.max(0, img.length - 2048), img.length]);
  return out;
}

const mutation = fc.record({
  edits: fc.array(fc.record({ range: fc.nat(), at: fc.nat(), kind: fc.constantFrom('byte', 'u32', 'u32small', 'bit'), value: fc.nat({ max: 0xffffffff }) }), {
    minLength: 1,
    maxLength: 6,
  }),
  truncate: fc.option(fc.nat(), { freq: 5 }),
});

type Mutation = typeof mutation extends fc.Arbitrary<infer T> ? T : never;

function mutate(img: Buffer, m: Mutation, hot = hotRanges(img)): Buffer {
  let out = Buffer.from(img);
  for (const e of m.edits) {
    const [a, b] = hot[e.range % hot.length];
    if (b <= a) continue;
    const at = a + (e.at % (b - a));
    if (e.kind === 'byte') out[at] = e.value & 0xff;
    else if (e.kind === 'bit') out[at] ^= 1 << (e.value & 7);
    else if (at + 4 <= out.length) out.writeUInt32LE(e.kind === 'u32small' ? e.value % 4096 : e.value >>> 0, at);
  }
  if (m.truncate !== null) out = out.subarray(0, m.truncate % (out.length + 1));
  return out;
}

/** Exercise a disk the way the pipeline would; any error must be a VmdkFormatError. */
async function exercise(path: string, write: boolean): Promise<void> {
  let disk;
  try {
    disk = await openDisk(path, { allowEncrypted: true, readOnly: !write });
  } catch (e) {
    expect(e).toBeInstanceOf(VmdkFormatError);
    return;
  }
  try {
    const limit = Math.min(disk.capacity, 1 << 20);
    try {
      await disk.read(0, limit);
    } catch (e) {
      expect(e).toBeInstanceOf(VmdkFormatError);
    }
    try {
      let count = 0;
      for await (const r of disk.allocatedRanges()) {
        expect(r.length).toBeGreaterThan(0);
        if (++count > 5000) break;
      }
    } catch (e) {
      expect(e).toBeInstanceOf(VmdkFormatError);
    }
    if (write) {
      for (const at of [0, 4095, Math.max(0, limit - 5000)]) {
        try {
          const data = Buffer.alloc(Math.min(5000, disk.capacity - at), 0x5a);
          await disk.write(at, data);
          const back = await disk.read(at, data.length);
          expect(back.equals(data)).toBe(true);
        } catch (e) {
          expect(e).toBeInstanceOf(VmdkFormatError);
        }
      }
    }
  } finally {
    await disk.close().catch((e) => expect(e).toBeInstanceOf(VmdkFormatError));
  }
}

describe('fuzz (seeded mutation)', () => {
  it(
    'monolithicSparse headers, directories and tables',
    async () => {
      const path = join(dir, 'm-sparse.vmdk');
      await fc.assert(
        fc.asyncProperty(mutation, async (m) => {
          writeFileSync(path, mutate(corpus.sparse, m));
          await exercise(path, true);
        }),
        fcOptions,
      );
    },
    BUDGET_MS + 60_000,
  );

  it(
    'streamOptimized headers, footers, markers and compressed grains',
    async () => {
      const path = join(dir, 'm-stream.vmdk');
      await fc.assert(
        fc.asyncProperty(mutation, async (m) => {
          writeFileSync(path, mutate(corpus.stream, m));
          await exercise(path, true);
        }),
        fcOptions,
      );
    },
    BUDGET_MS + 60_000,
  );

  it(
    'vmfsSparse and seSparse headers, directories and tables (read only)',
    async () => {
      const grain = (index: number, n: number) => ({ index, data: patternData(n, index) });
      const esx: Array<[BuiltExtent, 'vmfsSparse' | 'seSparse']> = [
        [buildCowd(4096 + 64, 1, [grain(3, 512), grain(4, 512), grain(4095, 512), grain(4096 + 1, 512)]), 'vmfsSparse'],
        [buildSeSparse(32768 + 64, [grain(1, 4096), grain(2, 4096), { index: 5, zero: 'zero' }, grain(4096, 4096)]), 'seSparse'],
      ];
      const paths = esx.map(([built, createType], i) => {
        const path = join(dir, `m-esx${i}.vmdk`);
        const capacitySectors = createType === 'vmfsSparse' ? 4096 + 64 : 32768 + 64;
        return [path, writeEsxDisk(path, built.bytes, { createType, capacitySectors, cid: '1' })];
      });
      const hot = ([b]: [BuiltExtent, string]): Array<[number, number]> => [
        [0, 2048],
        [b.gdOffset, b.gdOffset + 64],
        ...[...b.tables.values()].map((t): [number, number] => [t, t + 64]),
      ];
      await fc.assert(
        fc.asyncProperty(fc.nat({ max: 1 }), mutation, async (which, m) => {
          writeFileSync(paths[which][1], mutate(esx[which][0].bytes, m, hot(esx[which])));
          await exercise(paths[which][0], false);
        }),
        fcOptions,
      );
    },
    BUDGET_MS + 60_000,
  );

  it(
    'text descriptors: parse round-trips exactly or throws VmdkFormatError',
    () => {
      const base = corpus.descriptor.toString('utf8');
      const lines = base.split('\n');
      const lineEdit = fc.record({
        line: fc.nat(),
        op: fc.constantFrom('insert', 'delete', 'replace', 'splice', 'crlf'),
        text: fc.oneof(
          fc.string({ maxLength: 40 }),
          fc.constantFrom(
            'RW 10 FLAT "x" 0',
            'RDONLY 1 ZERO',
            'ddb.a = "b"',
            'encryption.x = "y"',
            'CID=zz',
            'version=9',
            '#',
            '"',
            '=',
            'RW',
            'createType="vmfs"',
            'encoding="GBK"',
            '\uFEFF',
            '\0',
          ),
        ),
        at: fc.nat(),
      });
      fc.assert(
        fc.property(fc.array(lineEdit, { minLength: 1, maxLength: 5 }), (edits) => {
          const ls = [...lines];
          for (const e of edits) {
            const i = e.line % (ls.length + 1);
            if (e.op === 'insert') ls.splice(i, 0, e.text);
            else if (e.op === 'delete') ls.splice(i, 1);
            else if (e.op === 'replace') ls[i] = e.text;
            else if (e.op === 'crlf') ls[i] = (ls[i] ?? '') + '\r';
            else {
              const s = ls[i] ?? '';
              const at = e.at % (s.length + 1);
              ls[i] = s.slice(0, at) + e.text + s.slice(at);
            }
          }
          const text = ls.join('\n');
          let d: Descriptor;
          try {
            d = Descriptor.parse(Buffer.from(text, 'utf8'), { file: 'fuzz.vmdk' });
          } catch (err) {
            expect(err).toBeInstanceOf(VmdkFormatError);
            expect(typeof (err as VmdkFormatError).code).toBe('string');
            return;
          }
          const nul = text.indexOf('\0');
          expect(d.toString()).toBe(nul >= 0 ? text.slice(0, nul) : text);
          const again = Descriptor.parse(d.toString());
          expect(again.entries()).toEqual(d.entries());
          expect(again.extents).toEqual(d.extents);
          // An edit through the API keeps the result parseable.
          d.set('ddb.fuzz', 'v');
          d.set('fuzz.header', 'w');
          expect(Descriptor.parse(d.toString()).get('ddb.fuzz')).toBe('v');
        }),
        fcOptions,
      );
    },
    BUDGET_MS + 60_000,
  );

  it(
    'text descriptors opened as disks (extent lines, paths, sizes)',
    async () => {
      const base = corpus.descriptor.toString('utf8');
      const path = join(dir, 'm-desc.vmdk');
      copyFileSync(join(dir, 'flat-f001.vmdk'), join(dir, 'm-desc-f001.vmdk'));
      copyFileSync(join(dir, 'flat-f002.vmdk'), join(dir, 'm-desc-f002.vmdk'));
      const renamed = base.replaceAll('flat-f00', 'm-desc-f00');
      const edit = fc.record({
        find: fc.constantFrom(
          'RW 64 FLAT',
          '"m-desc-f001.vmdk"',
          '"m-desc-f002.vmdk" 0',
          'twoGbMaxExtentFlat',
          'version=1',
          'parentCID=ffffffff',
          'RW 64 FLAT "m-desc-f002.vmdk"',
        ),
        replace: fc.constantFrom(
          'RW 99999999 FLAT',
          'RDONLY 64 FLAT',
          '"../m-desc-f001.vmdk"',
          '"/etc/passwd"',
          '"m-desc-f001.vmdk" 64',
          '"m-desc-f001.vmdk" 9999999999',
          'monolithicSparse',
          'vmfsSparse',
          'version=3',
          'parentCID=1',
          'RW 64 ZERO',
          'RW 64 SPARSE "m-desc-f002.vmdk"',
          'RW 0 FLAT "m-desc-f002.vmdk"',
          '',
        ),
      });
      await fc.assert(
        fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 3 }), async (edits) => {
          let text = renamed;
          for (const e of edits) text = text.replace(e.find, e.replace);
          writeFileSync(path, text);
          await exercise(path, true);
        }),
        fcOptions,
      );
    },
    BUDGET_MS + 60_000,
  );
});
