import { readFile, writeFile } from 'node:fs/promises';
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

/**
 * Escape what non-ASCII text is left in a bundle built with `charset: 'ascii'`: only comments can
 * hold any, where `\u2192` reads as well as the arrow. The build fails if a line with one does not
 * look like a comment, rather than changing code.
 */
async function asciiComments(file: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  const lines = text.split('\n').map((line, i) => {
    if (!/[^\x00-\x7f]/.test(line)) return line;
    if (!/^\s*(\/\*\*?|\*|\/\/)/.test(line)) throw new Error(`${file}:${i + 1}: non-ASCII text outside a comment: review tsup.config.ts`);
    return line.replace(/[^\x00-\x7f]/gu, (c) => `\\u{${c.codePointAt(0)!.toString(16)}}`);
  });
  await writeFile(file, lines.join('\n'));
}

// The library ships ESM and CJS with types for each; the CLI is one CommonJS script.
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
    // One CommonJS file holds the whole CLI (docs/performance.md, "CLI start-up"): Node 20 resolves,
    // reads, compiles and links each ES module on its own, a cost every `vmseal` process paid for
    // each of the ~25 chunks a command loaded; one script is read and compiled once, and
    // src/cli/compile-cache.ts can keep V8's code for it. A command's modules are still evaluated only
    // when it runs (esbuild turns program.ts's import() of a command into a lazy initialiser).
    // batch-worker.js is the script of a batch's worker threads (src/cli/batch-pool.ts finds it there);
    // bin/vmseal.js loads code-cache.js at every start, and batch-worker-start.js for a batch only.
    entry: {
      main: 'src/cli/main.ts',
      'batch-worker': 'src/cli/batch-worker.ts',
      'code-cache': 'src/cli/code-cache.ts',
      'batch-worker-start': 'src/cli/batch-worker-start.ts',
    },
    outDir: 'dist/cli',
    format: ['cjs'],
    // `.js`, not `.cjs`: bin/vmseal.js, the tests and batch-pool.ts name main.js and batch-worker.js;
    // dist/cli/package.json (written below) tells Node they are CommonJS.
    outExtension: () => ({ js: '.js' }),
    splitting: false,
    sourcemap: true,
    clean: false,
    shims: true,
    target: 'node20',
    platform: 'node',
    noExternal: ['commander'],
    esbuildPlugins: [commanderLazyChildProcess],
    // ASCII only: V8 then holds the 1.3 MB source as one-byte text, decoded and scanned at every
    // start, instead of converting all of it to UTF-16 because one comment has an arrow or a dash
    // (−27 M instructions per start). esbuild escapes strings, regular expressions and names; the
    // comments it keeps (those inside object literals and classes) are escaped in onSuccess.
    esbuildOptions(options) {
      options.charset = 'ascii';
    },
    async onSuccess() {
      await writeFile('dist/cli/package.json', '{ "type": "commonjs" }\n');
      for (const file of ['dist/cli/main.js', 'dist/cli/batch-worker.js', 'dist/cli/batch-worker-start.js']) await asciiComments(file);
    },
  },
]);
