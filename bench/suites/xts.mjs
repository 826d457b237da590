// XTS throughput: vmseal's native core (each implementation, one thread, sync, in place) against
// node:crypto used the way a user without vmseal would (one createCipheriv per data unit) and
// against `openssl speed -evp aes-{128,256}-xts` measured in the same run; then the async API on
// a large buffer for 1 … N pool threads. Ratios compare numbers from this one run.
import { createCipheriv, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { measure, fmtGBs, quick, report } from '../lib.mjs';

const vm = await import(process.env.VMSEAL_DIST ?? new URL('../../dist/index.js', import.meta.url).href);

const MiB = 1024 * 1024;
const syncBytes = (quick ? 4 : 16) * MiB;
const nodeBytes = (quick ? 1 : 4) * MiB;
const asyncBytes = (quick ? 64 : 256) * MiB;
const opensslSeconds = quick ? 1 : 2;
const unitSizes = [512, 4096];
const keySizes = [{ bits: 256, bytes: 64 }, { bits: 128, bytes: 32 }];
const info = vm.xtsInfo();
const implementations = info.available;
const best = implementations[0];

function randomKey(bytes) {
  for (;;) {
    const key = randomBytes(bytes);
    if (!key.subarray(0, bytes / 2).equals(key.subarray(bytes / 2))) return key;
  }
}

/** bytes/s of vmseal's sync encrypt, one thread, in place. */
async function vmsealSync(implementation, keyBytes, unitSize) {
  const cipher = new vm.XtsCipher(randomKey(keyBytes), { implementation });
  // The portable engine is ~100× slower: a smaller buffer keeps the run short.
  const data = randomBytes(implementation === 'portable' ? MiB : syncBytes);
  const opts = { unitSize, firstUnit: 0, out: data };
  const ops = await measure(() => {
    cipher.encrypt(data, opts);
  });
  cipher.dispose();
  return ops * data.length;
}

/** bytes/s of node:crypto with a new cipher object per data unit (IV = the unit's tweak). */
async function nodePerUnit(keyBytes, unitSize) {
  const key = randomKey(keyBytes);
  const algorithm = keyBytes === 32 ? 'aes-128-xts' : 'aes-256-xts';
  const data = randomBytes(nodeBytes);
  const iv = Buffer.alloc(16);
  const ops = await measure(() => {
    for (let offset = 0, n = 0; offset < data.length; offset += unitSize, n++) {
      iv.writeUInt32LE(n, 0);
      const c = createCipheriv(algorithm, key, iv);
      c.update(data.subarray(offset, offset + unitSize)).copy(data, offset);
      c.final();
    }
  });
  return ops * data.length;
}

/** bytes/s from `openssl speed -mr -evp <alg> -bytes <n>`; null when openssl is missing. */
function opensslSpeed(bits, unitSize) {
  try {
    const out = execFileSync('openssl', ['speed', '-mr', '-evp', `aes-${bits}-xts`, '-bytes', String(unitSize), '-seconds', String(opensslSeconds)], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    // Machine-readable result line: +F:<index>:<ALGORITHM>:<bytes per second for the one size>
    const line = out.split('\n').find((l) => l.startsWith('+F:'));
    const value = line ? Number(line.split(':')[3]) : NaN;
    return Number.isFinite(value) ? value : null;
  } catch {
    return null;
  }
}

const rows = [];
const results = {};
for (const { bits, bytes } of keySizes) {
  for (const unitSize of unitSizes) {
    const label = `XTS-AES-${bits}, ${unitSize} B`;
    const row = { label };
    for (const impl of implementations) {
      row[impl] = await vmsealSync(impl, bytes, unitSize);
      console.log(`${label}: vmseal ${impl} ${fmtGBs(row[impl])} GB/s`);
    }
    row.node = await nodePerUnit(bytes, unitSize);
    console.log(`${label}: node:crypto per unit ${fmtGBs(row.node)} GB/s`);
    row.openssl = opensslSpeed(bits, unitSize);
    console.log(`${label}: openssl speed ${row.openssl == null ? 'n/a' : fmtGBs(row.openssl)} GB/s`);
    results[`${bits}/${unitSize}`] = row;
    rows.push([label, ...implementations.map((i) => fmtGBs(row[i])), fmtGBs(row.node), row.openssl == null ? 'n/a' : fmtGBs(row.openssl)]);
  }
}

// Async on the pool: one call on a large buffer, in place, 1 … N threads.
const maxThreads = Math.max(2, availableParallelism());
vm.setXtsThreads(maxThreads);
const asyncRows = [];
const asyncRate = {};
{
  const cipher = new vm.XtsCipher(randomKey(64));
  const data = Buffer.alloc(asyncBytes, 1);
  // Thread counts interleaved round by round (best round kept), so that load from other processes
  // on a shared machine colours all of them alike.
  const rounds = quick ? 2 : 4;
  for (let round = 0; round < rounds; round++) {
    for (let threads = 1; threads <= maxThreads; threads++) {
      const ops = await measure(() => cipher.encryptAsync(data, { unitSize: 4096, out: data, threads }), { minMs: quick ? 200 : 600, rounds: 1 });
      asyncRate[threads] = Math.max(asyncRate[threads] ?? 0, ops * data.length);
    }
  }
  for (let threads = 1; threads <= maxThreads; threads++) {
    console.log(`async ${asyncBytes / MiB} MiB, ${threads} thread(s): ${fmtGBs(asyncRate[threads])} GB/s`);
    asyncRows.push([threads, fmtGBs(asyncRate[threads]), (asyncRate[threads] / asyncRate[1]).toFixed(2)]);
  }
  cipher.dispose();
}

const r256x4096 = results['256/4096'];
const r256x512 = results['256/512'];
const ratios = [];
if (r256x4096.openssl) ratios.push({ name: `AES-256 4096 B: vmseal ${best} / openssl speed`, value: r256x4096[best] / r256x4096.openssl, target: 1.7 });
if (r256x512.openssl) ratios.push({ name: `AES-256 512 B: vmseal ${best} / openssl speed`, value: r256x512[best] / r256x512.openssl, target: 1.6 });
ratios.push({ name: `AES-256 512 B: vmseal ${best} / node:crypto one cipher per unit`, value: r256x512[best] / r256x512.node, target: 20 });
ratios.push({ name: `async ${asyncBytes / MiB} MiB: 2 threads / 1 thread`, value: asyncRate[2] / asyncRate[1], target: 1.8 });

report({
  title: 'AES-XTS throughput',
  notes: [
    `vmseal: sync encrypt, one thread, in place, on a ${syncBytes / MiB} MiB buffer (portable: 1 MiB); implementations available here: ${implementations.join(', ')}.`,
    `node:crypto: one createCipheriv per data unit (IV = unit number), ${nodeBytes / MiB} MiB per round — what a user without vmseal would write.`,
    `openssl: \`openssl speed -mr -evp aes-<bits>-xts -bytes <unit> -seconds ${opensslSeconds}\`, run during this suite.`,
    `async: encryptAsync on ${asyncBytes / MiB} MiB, 4096-byte units, in place, pool of ${maxThreads} threads, per-call \`threads\` 1 … ${maxThreads}.`,
    'GB/s = 10^9 bytes per second.',
  ],
  tables: [
    {
      caption: 'One thread, GB/s',
      columns: ['cipher, unit', ...implementations.map((i) => `vmseal ${i}`), 'node:crypto per unit', 'openssl speed'],
      rows,
    },
    {
      caption: `Async throughput on ${asyncBytes / MiB} MiB (XTS-AES-256, 4096-byte units)`,
      columns: ['threads', 'GB/s', 'vs 1 thread'],
      rows: asyncRows,
    },
  ],
  ratios,
});
