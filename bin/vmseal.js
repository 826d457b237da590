#!/usr/bin/env node
'use strict';
// The `vmseal` command: the CLI is built into dist/ by `npm install` (prepare → tsup).
// This file is CommonJS (bin/package.json), as is the CLI it runs: an ES-module entry would start
// Node's ES-module loader for one file (docs/performance.md, "CLI start-up"). dist/cli/code-cache.js
// runs dist/cli/main.js with a V8 code cache beside it (dist/cli/main.js.<command>.cache),
// made by the command's first successful run.
// VMSEAL_CLI_ENTRY (for vmseal's own tests only) names another build of dist/cli/main.js to run.
// VMSEAL_NO_CODE_CACHE=1 runs the CLI without the cache (neither read nor written).
const { existsSync } = require('node:fs');
const { dirname, join, resolve } = require('node:path');

const entry = process.env.VMSEAL_CLI_ENTRY ? resolve(process.env.VMSEAL_CLI_ENTRY) : join(__dirname, '..', 'dist', 'cli', 'main.js');
const loader = join(dirname(entry), 'code-cache.js');
if (!existsSync(entry)) {
  console.error(`vmseal: the CLI is not built (${entry} missing). Run \`npm install\` or \`npm run build\` in the package folder.`);
  process.exit(70);
}
// VMSEAL_DEBUG=1 (or `node --enable-source-maps`): stack traces name the src/*.ts lines. Node's own
// loader reads dist/cli/main.js.map when source maps are on; a script compiled from the code cache
// (vm.Script) gets none, so a debug run goes without the cache.
if (process.env.VMSEAL_DEBUG) process.setSourceMapsEnabled(true);
// Whether to use the cache (not with source maps, nor VMSEAL_NO_CODE_CACHE=1) is the loader's rule
// (codeCacheWanted), the same for the batch's worker threads. (A loader without these functions is
// an older build's, named by VMSEAL_CLI_ENTRY: it runs without the cache.)
const codeCache = existsSync(loader) ? require(loader) : undefined;
// V8's tiering for a batch (src/cli/v8-tiering.ts), set before the CLI is compiled: a batch's
// code cache (main.js.convert-batch.cache) is made and taken under the same flags.
if (typeof codeCache?.useBatchTiering === 'function') codeCache.useBatchTiering();
// A batch's worker threads start now, on the other cores, while this thread compiles and starts the
// CLI; the batch claims them (src/cli/batch-worker-start.ts). Loaded for a batch's command line only.
const workerStart = join(dirname(entry), 'batch-worker-start.js');
if (typeof codeCache?.isBatchCommandLine === 'function' && codeCache.isBatchCommandLine(process.argv.slice(2)) && existsSync(workerStart)) {
  require(workerStart).prestartBatchWorkers(dirname(entry));
}
if (typeof codeCache?.codeCacheWanted === 'function' && codeCache.codeCacheWanted()) {
  codeCache.runWithCodeCache(entry);
} else {
  try {
    require(entry);
  } catch (err) {
    // An ES-module build of the CLI (VMSEAL_CLI_ENTRY naming an older vmseal's dist/cli/main.js).
    if (!err || (err.code !== 'ERR_REQUIRE_ESM' && err.code !== 'ERR_REQUIRE_ASYNC_MODULE')) throw err;
    import(require('node:url').pathToFileURL(entry).href);
  }
}
