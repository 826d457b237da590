#!/usr/bin/env node
// `npm run fuzz`: the long fuzz runs that `npm test` only samples with fixed seeds.
//  1. the VMDK fuzzer (descriptors, sparse headers and tables) for a time budget: scripts/fuzz-vmdk.mjs;
//  2. the KeySafe grammar, TTLV decoder and KMIP wire fuzzers with every budget multiplied;
//  3. the crash and kill tests at every crash point, and many-extents at full size
//     (VMSEAL_TEST_FULL=1: test/helpers/points.ts; `npm test` visits a fixed sample). Takes long.
// Usage: npm run fuzz [-- --minutes N] [--scale K] [--seed S]   (defaults: 10 minutes of VMDK, ×50, random seed)
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  if (i < 0) return fallback;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v < 0) {
    console.error(`fuzz: ${name} needs a non-negative number`);
    process.exit(2);
  }
  return v;
};
const minutes = opt('--minutes', 10);
const scale = opt('--scale', 50);
const seed = opt('--seed', Math.floor(Math.random() * 2 ** 31));
console.log(`fuzz: seed ${seed} (replay with --seed ${seed}), VMDK budget ${minutes} min, property budgets ×${scale}`);

const run = (label, argv, env) => {
  console.log(`\nfuzz: ${label}`);
  const r = spawnSync(process.execPath, argv, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  return r.status === 0;
};
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const okVmdk = run('VMDK', [join(root, 'scripts', 'fuzz-vmdk.mjs'), '--minutes', String(minutes), '--seed', String(seed)], {});
const okProps = run('KeySafe, TTLV and KMIP wire', [vitest, 'run', 'test/keys/keysafe.test.ts', 'test/kmip/ttlv.test.ts', 'test/kmip/faults.test.ts'], {
  VMSEAL_FUZZ_SCALE: String(scale),
  VMSEAL_FUZZ_SEED: String(seed),
});
// Every test that samples its crash points or sizes through test/helpers/points.ts.
const okFull = run(
  'crash and kill tests at every point (VMSEAL_TEST_FULL=1)',
  [
    vitest,
    'run',
    '--testTimeout=3600000',
    'test/pipeline/crash-fs.test.ts',
    'test/pipeline/sigkill.test.ts',
    'test/pipeline/single-file-commit.test.ts',
    'test/pipeline/many-extents.test.ts',
    'test/vmdk/sparse-crash.test.ts',
    'test/disk/data-check-crash.test.ts',
    'test/vm/folder-crash.test.ts',
  ],
  { VMSEAL_TEST_FULL: '1' },
);
if (!okVmdk || !okProps || !okFull) {
  console.error(`fuzz: FAILED (seed ${seed})`);
  process.exit(1);
}
console.log('fuzz: all passed');
