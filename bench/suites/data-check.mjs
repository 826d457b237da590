// Data check (format version 2): what a write of data unit 0 costs with the update protocol
// (pending value durable, unit 0 written and synced, value committed on flush) against the same
// write on a version-1 disk (no data check), and against a write of another unit. File systems
// rewrite their superblock in unit 0 on mount and unmount, so this is the cost per such write.
//
// Run: node bench/run.mjs data-check [--quick]
import { mkdtempSync, rmSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { quick, report } from '../lib.mjs';

const vm = await import(process.env.VMSEAL_DIST ?? new URL('../../dist/index.js', import.meta.url).href);
const MiB = 1024 * 1024;
const CAPACITY = 64 * MiB;
const OPS = quick ? 40 : 300;
const keys = { passphrase: 'bench' };
const lockers = [{ kind: 'passphrase', passphrase: 'bench', rounds: 1000 }];

/** Turn a fresh version-2 disk into version 1: no data check line, authenticator over version "1". */
async function toVersion1(path) {
  const p = await vm.readEncryptionParams(path);
  const dek = (await vm.unlockKeySafe(p.keySafe, keys)).key;
  const authenticator = vm.computeAuthenticator(dek, {
    cipher: p.cipher,
    dataUnitSize: p.unitSize,
    capacity: CAPACITY,
    diskId: p.diskId,
    extra: { formatVersion: '1' },
  });
  dek.fill(0);
  const d = await vm.openPlainDisk(path, { allowEncrypted: true });
  await d.updateDescriptor((desc) => {
    desc.set('encryption.format', 'vmseal/1');
    desc.delete('encryption.dataCheck');
    desc.set('encryption.authenticator', authenticator);
  });
  await d.close();
}

/** Milliseconds per operation of `op` over OPS runs (after a few warm-up runs). */
async function perOp(op) {
  for (let i = 0; i < 3; i++) await op(i);
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < OPS; i++) await op(i);
  return Number(process.hrtime.bigint() - t0) / 1e6 / OPS;
}

const dir = mkdtempSync(join(tmpdir(), 'vmseal-bench-datacheck-'));
const rows = [];
try {
  for (const subformat of ['monolithicSparse', 'monolithicFlat']) {
    const v2 = join(dir, `v2-${subformat}.vmdk`);
    const v1 = join(dir, `v1-${subformat}.vmdk`);
    await (await vm.createEncryptedDisk(v2, { capacity: CAPACITY, subformat, lockers })).close();
    await (await vm.createEncryptedDisk(v1, { capacity: CAPACITY, subformat, lockers })).close();
    await toVersion1(v1);
    const data = Buffer.alloc(4096);
    const measure = async (path, offset, flush) => {
      const d = await vm.openDisk(path, { keys });
      try {
        // A new plaintext each time, so that every write of unit 0 changes its data check.
        return await perOp(async () => {
          randomFillSync(data);
          await d.write(offset, data);
          if (flush) await d.flush();
        });
      } finally {
        await d.close();
      }
    };
    const row = (what, ms) => rows.push([subformat, what, ms.toFixed(3)]);
    const base = await measure(v1, 0, true);
    row('version 1 (no data check): write unit 0 + flush', base);
    const withCheck = await measure(v2, 0, true);
    row('version 2: write unit 0 + flush (pending, data, commit)', withCheck);
    row('version 2: write unit 0, no flush (pending + data sync)', await measure(v2, 0, false));
    row('version 2: write unit 64 + flush (no data check work)', await measure(v2, 32768, true));
    rows.push([subformat, 'ratio unit-0 write+flush, version 2 / version 1', (withCheck / base).toFixed(2)]);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

report({
  title: 'Data check: cost per write of unit 0',
  notes: [
    `${OPS} writes of 4 KiB at offset 0 (a new random plaintext each), each followed by flush() where stated, on a ${CAPACITY / MiB} MiB disk in ${tmpdir()}.`,
    'Version 2 adds, per changing unit-0 write: one descriptor update made durable before the data (a one-sector write + fsync for monolithicSparse, an atomic replace for a text descriptor), an fdatasync of the data, and one more descriptor update on flush/close.',
  ],
  tables: [{ caption: 'milliseconds per operation', columns: ['subformat', 'operation', 'ms/op'], rows }],
  ratios: [],
});
