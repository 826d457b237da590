#!/usr/bin/env node
// The `vmseal` command: the CLI is built into dist/ by `npm install` (prepare → tsup).
// VMSEAL_CLI_ENTRY (for vmseal's own tests only) names another build of dist/cli/main.js to run.
import { pathToFileURL } from 'node:url';

const entry = process.env.VMSEAL_CLI_ENTRY ? pathToFileURL(process.env.VMSEAL_CLI_ENTRY).href : '../dist/cli/main.js';
import(entry).catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('main.js')) {
    console.error('vmseal: the CLI is not built (dist/cli/main.js missing). Run `npm install` or `npm run build` in the package folder.');
    process.exit(70);
  }
  throw err;
});
