#!/usr/bin/env node
// `npm test` (after `npm run build`): the whole vitest suite, then the known-answer and bad-input tests
// against the AddressSanitizer + UndefinedBehaviorSanitizer build (scripts/test-sanitized.mjs), then
// one closing line with the totals of both: "tests: N passed, N failed, N skipped".
//
// `npm test -- <vitest args>` (e.g. a folder) runs just vitest with those arguments.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
const extra = process.argv.slice(2);
const tmp = mkdtempSync(join(tmpdir(), 'vmseal-test-report-'));

function run(label, argv, env = {}) {
  const r = spawnSync(process.execPath, argv, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  if (r.error) console.error(`${label}: could not start: ${r.error.message}`);
  return r.status === 0;
}

/** Totals from a vitest JSON report (Jest-compatible fields); null if the run wrote none. */
function totals(file) {
  if (!existsSync(file)) return null;
  const j = JSON.parse(readFileSync(file, 'utf8'));
  return { passed: j.numPassedTests, failed: j.numFailedTests, skipped: j.numPendingTests + j.numTodoTests };
}

let ok;
const reports = [];
try {
  const mainJson = join(tmp, 'main.json');
  ok = run('vitest', [vitest, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${mainJson}`, ...extra]);
  reports.push(totals(mainJson));
  if (extra.length === 0) {
    const sanitizedJson = join(tmp, 'sanitized.json');
    ok = run('sanitized', [join(root, 'scripts', 'test-sanitized.mjs')], { VMSEAL_VITEST_JSON: sanitizedJson }) && ok;
    reports.push(totals(sanitizedJson));
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
const sum = { passed: 0, failed: 0, skipped: 0 };
for (const t of reports) {
  if (!t) {
    ok = false;
    continue;
  }
  sum.passed += t.passed;
  sum.failed += t.failed;
  sum.skipped += t.skipped;
}
if (sum.failed > 0) ok = false;
console.log(`\ntests: ${sum.passed} passed, ${sum.failed} failed, ${sum.skipped} skipped`);
process.exit(ok ? 0 : 1);
