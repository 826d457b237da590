#!/usr/bin/env node
// Benchmark runner: runs each suite in bench/suites/ in its own process (so one suite's memory and
// JIT state cannot colour another's), collects what each reports, writes the whole run as JSON under
// bench/results/, and regenerates docs/performance.md from it with the machine, date and versions.
//
// Usage: npm run bench [-- SUITE ...] [--quick]
//   SUITE   names of files in bench/suites/ without .mjs (default: all)
//   --quick smaller sizes and fewer repetitions, for a smoke run
//
// Suite protocol: a suite is an ES module run as `node bench/suites/NAME.mjs [--quick]`; it writes
// exactly one JSON object to the file named by the env var VMSEAL_BENCH_OUT:
//   { "title": string, "notes": string[], "tables": [{ "caption": string, "columns": string[], "rows": (string|number)[][] }],
//     "ratios": [{ "name": string, "value": number, "target": number|null }] }
import { spawnSync, execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync, mkdirSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const suitesDir = join(root, 'bench', 'suites');
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const wanted = args.filter((a) => !a.startsWith('--'));
const all = readdirSync(suitesDir)
  .filter((f) => f.endsWith('.mjs'))
  .map((f) => f.slice(0, -4))
  .sort();
const suites = wanted.length ? wanted : all;
for (const s of suites) {
  if (!all.includes(s)) {
    console.error(`bench: no suite named "${s}" (have: ${all.join(', ')})`);
    process.exit(2);
  }
}
if (!existsSync(join(root, 'dist', 'index.js'))) {
  console.error('bench: dist/ is missing; run `npm run build` first');
  process.exit(2);
}

function tryVersion(cmd, argv) {
  try {
    return execFileSync(cmd, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')[0]
      .trim();
  } catch {
    return 'not found';
  }
}

const cpuFlags = (() => {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const flags = new Set((info.match(/^flags\s*:(.*)$/m)?.[1] ?? '').trim().split(/\s+/));
    return ['aes', 'vaes', 'vpclmulqdq', 'avx2', 'avx512f', 'avx512vl', 'gfni'].filter((f) => flags.has(f));
  } catch {
    return [];
  }
})();

const machine = {
  date: new Date().toISOString(),
  cpu: os.cpus()[0]?.model ?? 'unknown',
  cores: os.cpus().length,
  memoryGiB: Math.round(os.totalmem() / 2 ** 30),
  cpuFlags,
  os: `${os.type()} ${os.release()} ${os.arch()}`,
  node: process.version,
  nodeOpenssl: process.versions.openssl,
  // Node parses the bundle this names before any JavaScript runs, in every process (≈45 ms of CPU
  // for Debian's 220 KB system bundle on these machines): a whole-process timing depends on it.
  nodeExtraCaCerts: process.env.NODE_EXTRA_CA_CERTS ? 'set' : 'unset',
  openssl: tryVersion('openssl', ['version']),
  qemuImg: tryVersion('qemu-img', ['--version']),
  vmseal: JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')).version,
  quick,
};

const results = [];
const tmp = mkdtempSync(join(os.tmpdir(), 'vmseal-bench-'));
try {
  for (const suite of suites) {
    const out = join(tmp, `${suite}.json`);
    console.log(`\n== ${suite} ==`);
    const child = spawnSync(process.execPath, ['--expose-gc', join(suitesDir, `${suite}.mjs`), ...(quick ? ['--quick'] : [])], {
      cwd: root,
      stdio: 'inherit',
      env: { ...process.env, VMSEAL_BENCH_OUT: out },
    });
    if (child.status !== 0 || !existsSync(out)) {
      console.error(`bench: suite ${suite} failed (exit ${child.status ?? child.signal})`);
      results.push({ suite, failed: true });
      continue;
    }
    results.push({ suite, ...JSON.parse(readFileSync(out, 'utf8')) });
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}

function table(t) {
  const lines = [`**${t.caption}**`, '', `| ${t.columns.join(' | ')} |`, `|${t.columns.map(() => '---').join('|')}|`];
  for (const r of t.rows) lines.push(`| ${r.join(' | ')} |`);
  return lines.join('\n');
}

for (const r of results) {
  if (r.failed) continue;
  for (const t of r.tables ?? []) console.log('\n' + table(t));
  for (const q of r.ratios ?? []) {
    const verdict = q.target == null ? '' : q.value >= q.target ? ' (target met)' : ' (TARGET MISSED)';
    console.log(`ratio ${q.name}: ${q.value.toFixed(2)}${q.target == null ? '' : ` target ≥ ${q.target}`}${verdict}`);
  }
}

mkdirSync(join(root, 'bench', 'results'), { recursive: true });
const record = { machine, results };
const stamp = machine.date.replace(/[:.]/g, '-');
writeFileSync(join(root, 'bench', 'results', `${stamp}.json`), JSON.stringify(record, null, 2) + '\n');
writeFileSync(join(root, 'bench', 'results', 'latest.json'), JSON.stringify(record, null, 2) + '\n');

// docs/performance.md keeps one section per suite between `<!-- suite:X -->` markers: a run of some
// suites replaces only theirs, in place. Everything outside the markers (the header, sections
// written by hand after the suites) is kept as it is; a suite seen for the first time goes after
// the last suite section.
const docPath = join(root, 'docs', 'performance.md');
const HEADER = [
  '# Performance',
  '',
  'Generated by `npm run bench` (bench/run.mjs); raw results in bench/results/latest.json. Each suite runs in its own',
  'process; ratios compare measurements taken in the same run, because these machines are shared and noisy.',
  'Tests never assert timings: speed is measured here only.',
  '',
].join('\n');
let doc = existsSync(docPath) ? readFileSync(docPath, 'utf8') : HEADER + '\n';
for (const r of results) {
  if (r.failed) continue;
  const parts = [
    `## ${r.title}`,
    '',
    `Measured ${machine.date.slice(0, 10)} on ${machine.cpu} (${machine.cores} cores, ${machine.memoryGiB} GiB; flags ${machine.cpuFlags.join(' ')}), ${machine.os}, Node ${machine.node} (OpenSSL ${machine.nodeOpenssl}; NODE_EXTRA_CA_CERTS ${machine.nodeExtraCaCerts ?? 'not recorded'}), ${machine.openssl}, ${machine.qemuImg}${quick ? ' — QUICK run, small sizes' : ''}.`,
    '',
    ...(r.notes ?? []).map((n) => `- ${n}`),
    '',
    ...(r.tables ?? []).flatMap((t) => [table(t), '']),
  ];
  if (r.ratios?.length) {
    parts.push('| ratio | measured | target |', '|---|---|---|');
    for (const q of r.ratios)
      parts.push(`| ${q.name} | ${q.value.toFixed(2)}× | ${q.target == null ? '—' : `≥ ${q.target}× ${q.value >= q.target ? '(met)' : '(missed)'}`} |`);
    parts.push('');
  }
  doc = replaceSuiteSection(doc, r.suite, parts.join('\n'));
}

/** `doc` with the section of `suite` replaced by `body`, or added after the last suite section. */
function replaceSuiteSection(text, suite, body) {
  const open = `<!-- suite:${suite} -->\n`;
  const close = `<!-- /suite:${suite} -->`;
  const start = text.indexOf(open);
  const end = start < 0 ? -1 : text.indexOf(close, start);
  if (start >= 0 && end >= 0) return text.slice(0, start + open.length) + body + text.slice(end);
  const block = `${open}${body}${close}\n`;
  const lastClose = [...text.matchAll(/<!-- \/suite:\S+ -->\n?/g)].at(-1);
  if (!lastClose) return text.replace(/\n*$/, '\n\n') + block;
  const at = lastClose.index + lastClose[0].length;
  return text.slice(0, at) + '\n' + block + text.slice(at);
}
writeFileSync(docPath, doc);
console.log(`\nbench: wrote bench/results/${stamp}.json and docs/performance.md`);
process.exit(results.some((r) => r.failed) ? 1 : 0);
