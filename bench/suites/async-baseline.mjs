// The pipeline's async encryption path (runChunks + the disk data cipher's encryptAsync on the
// engine's chunk buffers, 4 MiB chunks, depth 4) built from this tree versus the same path built
// from a baseline git ref (default: main) with that ref's own native addon. Reads and writes are
// no-ops, so the number is the crypto path alone, where a copy in or out of native memory would
// show. Rounds alternate between the two builds, each in its own child process; the ratio is of
// the medians. On Linux it also reports the JS thread's share of the CPU: work done there is
// serial and leaves the pool waiting (a memset of fresh chunk buffers on the JS thread once cost
// a quarter of the wall clock while the per-CPU-second number looked better).
//
// Run: node bench/run.mjs async-baseline [--quick]
//   VMSEAL_BASELINE_REF=<ref>          what to compare against (default: main)
//   VMSEAL_BASELINE_NATIVE=<file.node> use this baseline addon instead of building the ref's
//   child mode: node bench/suites/async-baseline.mjs --child BUNDLE ADDON
import { spawnSync, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, symlinkSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { quick, report, fmtMBs } from '../lib.mjs';

const MiB = 1024 * 1024;
const self = fileURLToPath(import.meta.url);
const root = join(dirname(self), '..', '..');
const TOTAL = (quick ? 256 : 1024) * MiB;
const CHUNK = 4 * MiB;
const UNIT = 512;

/**
 * CPU seconds (user + system) of the JS (main) thread alone, from /proc (Linux; null elsewhere).
 * Its share of all CPU is what shows serial work on the JS thread, which the two totals hide.
 */
function jsThreadCpuSeconds() {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100; // utime, stime in USER_HZ (100 on Linux)
  } catch {
    return null;
  }
}

async function child(bundle) {
  const { runChunks, createDataCipher } = await import(pathToFileURL(bundle).href);
  const key = Buffer.alloc(64);
  for (let i = 0; i < 64; i++) key[i] = i;
  const cipher = createDataCipher('aes-256-xts', key, UNIT);
  async function* chunks() {
    for (let offset = 0; offset < TOTAL; offset += CHUNK) yield { offset, length: CHUNK };
  }
  const pass = () =>
    runChunks({
      chunks: chunks(),
      chunkSize: CHUNK,
      depth: 4,
      what: 'bench',
      read: async () => {},
      async transform(chunk, buf) {
        await cipher.encrypt(buf, chunk.offset / UNIT);
        return [{ offset: chunk.offset, data: buf }];
      },
      write: async () => {},
    });
  await pass(); // warm-up: buffers allocated, pool threads started
  const js0 = jsThreadCpuSeconds();
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await pass();
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const js1 = jsThreadCpuSeconds();
  cipher.dispose();
  // CPU time (all threads, user + system) as well as wall clock: on a loaded machine the wall
  // clock mostly measures the neighbours, while bytes per CPU-second still shows added copies.
  const cpuSeconds = (cpu.user + cpu.system) / 1e6;
  // Share of the CPU spent on the JS thread: the pool should do nearly all the work. (Tick
  // granularity is 10 ms, so one run is coarse; the median over rounds is what to read.)
  const jsShare = js0 === null || js1 === null ? null : Math.min(1, (js1 - js0) / cpuSeconds);
  process.stdout.write(JSON.stringify({ bytesPerSec: TOTAL / seconds, bytesPerCpuSec: TOTAL / cpuSeconds, jsShare }) + '\n');
}

/** Bundle the engine and the data cipher of the tree at `tree` into one ESM file. */
async function bundle(tree, out) {
  const { build } = await import('esbuild');
  const entry = join(dirname(out), `entry-${Math.random().toString(36).slice(2)}.ts`);
  writeFileSync(
    entry,
    `export { runChunks } from ${JSON.stringify(join(tree, 'src/pipeline/engine.ts'))};\n` +
      `export { createDataCipher } from ${JSON.stringify(join(tree, 'src/disk/cipher.ts'))};\n`,
  );
  await build({ entryPoints: [entry], bundle: true, platform: 'node', format: 'esm', outfile: out, logLevel: 'error' });
}

function buildBaselineAddon(tree) {
  // node-gyp as bundled with npm (the project has no node-gyp of its own).
  const prefix = dirname(dirname(process.execPath));
  const gyp = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  if (!existsSync(gyp)) throw new Error(`npm's node-gyp is not at ${gyp}: set VMSEAL_BASELINE_NATIVE to a baseline addon`);
  symlinkSync(join(root, 'node_modules'), join(tree, 'node_modules'));
  const r = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${prefix}`, '--jobs=2'], { cwd: tree, stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) throw new Error('building the baseline addon failed');
  return join(tree, 'build', 'Release', 'vmseal_xts.node');
}

function measure(bundlePath, addon) {
  const r = spawnSync(process.execPath, [self, '--child', bundlePath], { encoding: 'utf8', env: { ...process.env, VMSEAL_NATIVE_PATH: addon } });
  if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').pop());
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main() {
  const ref = process.env.VMSEAL_BASELINE_REF || 'main';
  const rounds = quick ? 7 : 11;
  const tmp = mkdtempSync(join(tmpdir(), 'vmseal-async-baseline-'));
  try {
    const baseTree = join(tmp, 'base');
    execFileSync('sh', ['-c', `mkdir -p "${baseTree}" && git -C "${root}" archive "${ref}" | tar -x -C "${baseTree}"`]);
    const baseAddon = process.env.VMSEAL_BASELINE_NATIVE || buildBaselineAddon(baseTree);
    const currentAddon = join(root, 'build', 'Release', 'vmseal_xts.node');
    if (!existsSync(currentAddon)) throw new Error(`no addon at ${currentAddon}: run npm run build:native`);
    const baseBundle = join(tmp, 'base.mjs');
    const currentBundle = join(tmp, 'current.mjs');
    await bundle(baseTree, baseBundle);
    await bundle(root, currentBundle);
    const baseRuns = [];
    const currentRuns = [];
    for (let r = 0; r < rounds; r++) {
      // Alternate which build goes first, so drift (thermal, neighbours) hits both alike.
      if (r % 2 === 0) {
        baseRuns.push(measure(baseBundle, baseAddon));
        currentRuns.push(measure(currentBundle, currentAddon));
      } else {
        currentRuns.push(measure(currentBundle, currentAddon));
        baseRuns.push(measure(baseBundle, baseAddon));
      }
      const [b, c] = [baseRuns[r], currentRuns[r]];
      console.log(
        `round ${r + 1}/${rounds}: ${ref} ${fmtMBs(b.bytesPerSec)} MB/s (${fmtMBs(b.bytesPerCpuSec)} per CPU-s), ` +
          `this tree ${fmtMBs(c.bytesPerSec)} MB/s (${fmtMBs(c.bytesPerCpuSec)} per CPU-s)`,
      );
    }
    const base = baseRuns.map((x) => x.bytesPerSec);
    const current = currentRuns.map((x) => x.bytesPerSec);
    const baseCpu = baseRuns.map((x) => x.bytesPerCpuSec);
    const currentCpu = currentRuns.map((x) => x.bytesPerCpuSec);
    const baseJs = baseRuns.map((x) => x.jsShare).filter((x) => x !== null);
    const currentJs = currentRuns.map((x) => x.jsShare).filter((x) => x !== null);
    const pct = (x) => `${Math.round(x * 100)}%`;
    const ratio = median(current) / median(base);
    const cpuRatio = median(currentCpu) / median(baseCpu);
    report({
      title: `Pipeline async path versus ${ref}`,
      notes: [
        `runChunks + createDataCipher('aes-256-xts', unit ${UNIT}).encrypt on the engine's chunk buffers: ${TOTAL / MiB} MiB per run, ${CHUNK / MiB} MiB chunks, depth 4, reads and writes no-ops; each run in its own process after a warm-up pass.`,
        `${rounds} rounds, alternating order; medians. Baseline: ${ref} built from git archive with its own addon${process.env.VMSEAL_BASELINE_NATIVE ? ` (${process.env.VMSEAL_BASELINE_NATIVE})` : ''}.`,
      ],
      tables: [
        {
          caption: 'Pipeline async encryption throughput (MB/s)',
          columns: ['build', 'median', 'min', 'max'],
          rows: [
            [ref, fmtMBs(median(base)), fmtMBs(Math.min(...base)), fmtMBs(Math.max(...base))],
            ['this tree', fmtMBs(median(current)), fmtMBs(Math.min(...current)), fmtMBs(Math.max(...current))],
          ],
        },
        {
          caption: 'Pipeline async encryption per CPU-second, all threads (MB per CPU-s)',
          columns: ['build', 'median', 'min', 'max'],
          rows: [
            [ref, fmtMBs(median(baseCpu)), fmtMBs(Math.min(...baseCpu)), fmtMBs(Math.max(...baseCpu))],
            ['this tree', fmtMBs(median(currentCpu)), fmtMBs(Math.min(...currentCpu)), fmtMBs(Math.max(...currentCpu))],
          ],
        },
        ...(baseJs.length && currentJs.length
          ? [
              {
                caption: 'Share of that CPU spent on the JS thread (serial work the pool waits for; lower is better)',
                columns: ['build', 'median', 'min', 'max'],
                rows: [
                  [ref, pct(median(baseJs)), pct(Math.min(...baseJs)), pct(Math.max(...baseJs))],
                  ['this tree', pct(median(currentJs)), pct(Math.min(...currentJs)), pct(Math.max(...currentJs))],
                ],
              },
            ]
          : []),
      ],
      ratios: [
        { name: `pipeline async path, this tree / ${ref} (wall clock)`, value: ratio, target: 0.95 },
        { name: `pipeline async path, this tree / ${ref} (per CPU-second)`, value: cpuRatio, target: 0.95 },
      ],
    });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') await child(process.argv[3]);
else await main();
