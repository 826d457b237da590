#!/usr/bin/env node
// Build the native addon with AddressSanitizer + UndefinedBehaviorSanitizer (CMakeLists.txt,
// -DVMSEAL_SANITIZE=ON) into build-sanitize/, then run the XTS known-answer and bad-input tests
// against that binary. Exits non-zero if the build or any test fails.
//
// Plain cmake, not cmake-js: nothing is downloaded, Node's headers come from the machine
// (<node prefix>/include/node). Needs cmake, make (or ninja) and g++ (GCC's libasan/libubsan).
//
// The node binary itself is not instrumented, so the sanitizer runtimes are preloaded
// (LD_PRELOAD) into node and every vitest worker it forks; leak detection is off because Node
// keeps memory until exit by design.
import { spawnSync, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = join(root, 'build-sanitize');
const outDir = join(buildDir, 'Release');
const addon = join(outDir, 'vmseal_xts.node');
// Known answers and bad input, plus the differential tests (every unit size: ciphertext stealing
// at every tail length) and the async/dispose/thread-exit tests, where memory errors would hide.
const testFiles = [
  'test/xts/kat.test.ts',
  'test/xts/bad-input.test.ts',
  'test/xts/native-bad-input.test.ts',
  'test/xts/differential.test.ts',
  'test/xts/api.test.ts',
  'test/xts/package.test.ts',
  // Buffers transferred or shrunk while the pool works: use-after-free here before the fix.
  'test/xts/async-detach.test.ts',
  // Native-owned buffers: mmap-backed ones read as zeros and are paged in where first written.
  'test/xts/cipher-buffer-pages.test.ts',
  // The copy jobs' chunk transfer: a pool thread reads, encrypts and writes a native-owned buffer.
  'test/xts/transfer.test.ts',
];
const cxx = process.env.CXX || 'g++';

function run(cmd, args, env = process.env) {
  console.log(`\n[test-sanitized] $ ${[cmd, ...args].join(' ')}`);
  const result = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env });
  if (result.error) {
    console.error(`[test-sanitized] could not run ${cmd}: ${result.error.message}`);
    process.exit(1);
  }
  if (result.status !== 0) {
    console.error(`[test-sanitized] FAILED: ${cmd} exited with ${result.status ?? result.signal}`);
    process.exit(1);
  }
}

function sanitizerRuntime(name) {
  const path = execFileSync(cxx, [`-print-file-name=${name}`], { encoding: 'utf8' }).trim();
  // An unknown library prints its bare name back.
  if (!path.includes('/') || !existsSync(path)) {
    console.error(`[test-sanitized] ${cxx} has no ${name}; install GCC's sanitizer runtimes (Debian: g++ brings libasan8/libubsan1)`);
    process.exit(1);
  }
  return path;
}

console.log('[test-sanitized] building the addon with -fsanitize=address,undefined into build-sanitize/');
run('cmake', [
  '-S',
  root,
  '-B',
  buildDir,
  '-DVMSEAL_SANITIZE=ON',
  '-DCMAKE_BUILD_TYPE=Release',
  `-DCMAKE_CXX_COMPILER=${cxx}`,
  `-DCMAKE_LIBRARY_OUTPUT_DIRECTORY=${outDir}`,
]);
run('cmake', ['--build', buildDir, '--parallel', String(availableParallelism())]);
if (!existsSync(addon)) {
  console.error(`[test-sanitized] the build did not produce ${addon}`);
  process.exit(1);
}

const preload = [sanitizerRuntime('libasan.so'), sanitizerRuntime('libubsan.so')];
const env = {
  ...process.env,
  LD_PRELOAD: [...preload, process.env.LD_PRELOAD].filter(Boolean).join(' '),
  // detect_leaks=0: Node frees little at exit by design. handle_segv=0: V8 uses SIGSEGV itself
  // (WebAssembly bounds traps) and installs its own handler.
  ASAN_OPTIONS: 'detect_leaks=0:handle_segv=0:abort_on_error=1:halt_on_error=1',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
  VMSEAL_NATIVE_PATH: addon,
};
// Make sure the runtimes really load and the addon is the instrumented one before trusting a pass.
const probe = spawnSync(
  process.execPath,
  [
    '-e',
    `require(process.env.VMSEAL_NATIVE_PATH); const maps = require('fs').readFileSync('/proc/self/maps', 'utf8'); if (!/libasan/.test(maps) || !maps.includes(process.env.VMSEAL_NATIVE_PATH)) { console.error('sanitizer runtime or addon not mapped'); process.exit(1); }`,
  ],
  { env, stdio: 'inherit' },
);
if (probe.status !== 0) {
  console.error('[test-sanitized] FAILED: the sanitized addon did not load under LD_PRELOAD');
  process.exit(1);
}
console.log(`\n[test-sanitized] running ${testFiles.join(', ')} against ${addon}`);
console.log(`[test-sanitized] LD_PRELOAD=${env.LD_PRELOAD}`);
console.log(`[test-sanitized] ASAN_OPTIONS=${env.ASAN_OPTIONS} UBSAN_OPTIONS=${env.UBSAN_OPTIONS}`);
const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
// scripts/run-tests.mjs asks for a JSON report to add this run to the totals it prints.
const report = process.env.VMSEAL_VITEST_JSON ? ['--reporter=default', '--reporter=json', `--outputFile.json=${process.env.VMSEAL_VITEST_JSON}`] : [];
run(process.execPath, [vitest, 'run', ...report, ...testFiles], env);
console.log('\n[test-sanitized] OK: the sanitizer build passed the known-answer, bad-input, differential, API, thread/exit and detach tests');
