#!/usr/bin/env node
// Long fuzz run of the VMDK layer: runs test/vmdk/fuzz.test.ts with a bigger budget and a fresh seed.
//
// Usage: node scripts/fuzz-vmdk.mjs [--minutes N | --seconds N] [--seed N]
//   env VMSEAL_FUZZ_MS / VMSEAL_FUZZ_SEED work too (arguments win).
// Default: 10 minutes, a random seed (printed, so a failure can be replayed with --seed).
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const value = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = Number(args[i + 1]);
  if (!Number.isFinite(v) || v < 0) {
    console.error(`fuzz-vmdk: ${name} needs a non-negative number`);
    process.exit(2);
  }
  return v;
};
let ms = Number(process.env.VMSEAL_FUZZ_MS ?? 10 * 60_000);
if (value('--minutes') !== undefined) ms = value('--minutes') * 60_000;
if (value('--seconds') !== undefined) ms = value('--seconds') * 1000;
const seed = value('--seed') ?? Number(process.env.VMSEAL_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));

console.log(`fuzz-vmdk: budget ${Math.round(ms / 1000)} s, seed ${seed} (replay with --seed ${seed})`);
const r = spawnSync(process.execPath, [join(root, 'node_modules', 'vitest', 'vitest.mjs'), 'run', 'test/vmdk/fuzz.test.ts'], {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, VMSEAL_FUZZ_MS: String(Math.round(ms)), VMSEAL_FUZZ_SEED: String(seed) },
});
if (r.status !== 0) console.error(`fuzz-vmdk: FAILED with seed ${seed}`);
process.exit(r.status ?? 1);
