import { readFile } from 'node:fs/promises';
import { defineConfig, type Options } from 'tsup';

/**
 * commander, bundled into the CLI (docs/performance.md, "CLI start-up"): loaded from node_modules it
 * is CommonJS behind Node's ES-module loader (package resolution, the CJS export scan) and its first
 * line loads child_process, which brings net and dgram: together about a fifth of what `vmseal
 * --version` costs above Node's own start-up. vmseal declares no executable subcommands, the one use
 * commander has for child_process, so the bundle gets it on first use instead. The build fails if
 * commander no longer has that line, rather than bundling something unchecked.
 */
const commanderLazyChildProcess: NonNullable<Options['esbuildPlugins']>[number] = {
  name: 'commander-lazy-child-process',
  setup(build) {
    build.onLoad({ filter: /[\\/]commander[\\/]lib[\\/]command\.js$/ }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      const eager = "const childProcess = require('node:child_process');";
      if (!text.includes(eager)) throw new Error(`${args.path} no longer has "${eager}": review tsup.config.ts`);
      const lazy = "const childProcess = { spawn: (...args) => require('node:child_process').spawn(...args) };";
      return { contents: text.replace(eager, lazy), loader: 'js' };
    });
  },
};

// The library ships ESM and CJS with types for each; the CLI is ESM only.
// `shims` gives the CJS build an import.meta.url so the native loader can find the package root.
export default defineConfig([
  {
    entry: { index: 'src/index.ts' },
    format: ['esm', 'cjs'],
    // Members marked @internal (the pipeline's doors into EncryptedDisk, …) stay out of the published types.
    dts: { compilerOptions: { stripInternal: true } },
    sourcemap: true,
    clean: true,
    shims: true,
    target: 'node20',
    platform: 'node',
  },
  {
    // Commands are imported when they run (src/cli/program.ts): their chunks go beside main.js.
    // batch-worker.js is the script of a batch's worker threads (src/cli/batch-pool.ts finds it there).
    entry: { main: 'src/cli/main.ts', 'batch-worker': 'src/cli/batch-worker.ts' },
    outDir: 'dist/cli',
    format: ['esm'],
    sourcemap: true,
    clean: false,
    shims: true,
    target: 'node20',
    platform: 'node',
    noExternal: ['commander'],
    // commander's CommonJS calls require() for Node's modules, which an ES module does not have.
    banner: { js: "import { createRequire as __vmsealCreateRequire } from 'node:module'; const require = __vmsealCreateRequire(import.meta.url);" },
    esbuildPlugins: [commanderLazyChildProcess],
  },
]);
