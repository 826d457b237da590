#!/usr/bin/env node
// The `vmseal` command: the CLI is built into dist/ by `npm install` (prepare → tsup).
import('../dist/cli/main.js').catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND') {
    console.error('vmseal: the CLI is not built (dist/cli/main.js missing). Run `npm install` or `npm run build` in the package folder.');
    process.exit(70);
  }
  throw err;
});
