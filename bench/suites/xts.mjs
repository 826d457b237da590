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
// 4 MiB stays in the last-level cache, as `openssl speed`'s one small buffer does: the single-thread
// table compares the ciphers, not the memory. The async part uses a large buffer on purpose.
const syncBytes = 4 * MiB;
const nodeBytes = (quick ? 1 : 4) * MiB;
const asyncBytes = (quick ? 64 : 256) * MiB;
const opensslSeconds = quick ? 1 : 2;
const unitSizes = [512, 4096];
const keySizes = [
  { bits: 256, bytes: 64 },
  { bits: 128, bytes: 32 },
];
const info = vm.xtsInfo();
const implementations = info.available;
const best = implementations[0];

function randomKey(bytes) {
  for (;;) {
    const key = randomBytes(bytes);
    if (!key.subarray(0, bytes / 2).equals(key.subarray(bytes / 2))) return key;
  }
}

/**
 * Like lib.mjs measure(), but ops per second of user CPU time of this process — the clock
 * `openssl speed` uses by default — so that load from other processes on a shared machine does
 * not count against either side. Only for single-threaded, synchronous work.
 */
async function measureCpu(fn, { minMs = quick ? 100 : 400, rounds = quick ? 2 : 5 } = {}) {
  fn();
  let best = 0;
  for (let r = 0; r < rounds; r++) {
    let n = 0;
    const cpu0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    do {
      fn();
      n++;
    } while (Number(process.hrtime.bigint() - t0) / 1e6 < minMs);
    const userSeconds = process.cpuUsage(cpu0).user / 1e6;
    if (userSeconds > 0) best = Math.max(best, n / userSeconds);
  }
  return best;
}

/** bytes/s (user CPU time, and wall clock) of vmseal's sync encrypt, one thread, in place. */
async function vmsealSync(implementation, keyBytes, unitSize) {
  const cipher = new vm.XtsCipher(randomKey(keyBytes), { implementation });
  // The portable engine is ~100× slower: a smaller buffer keeps the run short.
  const data = randomBytes(implementation === 'portable' ? MiB : syncBytes);
  const opts = { unitSize, firstUnit: 0, out: data };
  const run = () => {
    cipher.encrypt(data, opts);
  };
  const cpu = (await measureCpu(run)) * data.length;
  const wall = (await measure(run)) * data.length;
  cipher.dispose();
  return { cpu, wall };
}

/** bytes/s of node:crypto with a new cipher object per data unit (IV = the unit's tweak). */
async function nodePerUnit(keyBytes, unitSize) {
  const key = randomKey(keyBytes);
  const algorithm = keyBytes === 32 ? 'aes-128-xts' : 'aes-256-xts';
  const data = randomBytes(nodeBytes);
  const iv = Buffer.alloc(16);
  const ops = await measureCpu(() => {
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
      const { cpu, wall } = await vmsealSync(impl, bytes, unitSize);
      row[impl] = cpu;
      if (impl === best) row.bestWall = wall;
      console.log(`${label}: vmseal ${impl} ${fmtGBs(cpu)} GB/s per CPU-second (${fmtGBs(wall)} GB/s wall clock)`);
    }
    row.node = await nodePerUnit(bytes, unitSize);
    console.log(`${label}: node:crypto per unit ${fmtGBs(row.node)} GB/s`);
    row.openssl = opensslSpeed(bits, unitSize);
    console.log(`${label}: openssl speed ${row.openssl == null ? 'n/a' : fmtGBs(row.openssl)} GB/s`);
    results[`${bits}/${unitSize}`] = row;
    rows.push([
      label,
      ...implementations.map((i) => fmtGBs(row[i])),
      fmtGBs(row.node),
      row.openssl == null ? 'n/a' : fmtGBs(row.openssl),
      fmtGBs(row.bestWall),
    ]);
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
  // The memory bound: copying the same buffer (one read + one write per byte, like in-place XTS).
  const copyTarget = Buffer.alloc(asyncBytes);
  const copyRate = (await measure(() => data.copy(copyTarget), { minMs: quick ? 200 : 600, rounds: quick ? 2 : 4 })) * data.length;
  console.log(`Buffer.copy ${asyncBytes / MiB} MiB: ${fmtGBs(copyRate)} GB/s`);
  asyncRows.push(['memory bound: Buffer.copy of the same size', fmtGBs(copyRate), '']);
  for (let threads = 1; threads <= maxThreads; threads++) {
    console.log(`async ${asyncBytes / MiB} MiB, ${threads} thread(s): ${fmtGBs(asyncRate[threads])} GB/s`);
    asyncRows.splice(threads - 1, 0, [threads, fmtGBs(asyncRate[threads]), (asyncRate[threads] / asyncRate[1]).toFixed(2)]);
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
    `async: encryptAsync on ${asyncBytes / MiB} MiB, 4096-byte units, in place, pool of ${maxThreads} threads, per-call \`threads\` 1 … ${maxThreads}, thread counts interleaved round by round. Far beyond the caches this is bound by memory bandwidth: compare with the Buffer.copy row.`,
    'GB/s = 10^9 bytes per second. The one-thread table divides by user CPU time, as `openssl speed` does by default, so that other load on a shared machine does not skew the ratios; the last column is the wall-clock rate of the fastest implementation for comparison. The async table is wall clock.',
  ],
  tables: [
    {
      caption: 'One thread, GB per second of user CPU time (the clock of `openssl speed`)',
      columns: ['cipher, unit', ...implementations.map((i) => `vmseal ${i}`), 'node:crypto per unit', 'openssl speed', `vmseal ${best}, wall clock`],
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
