import { defineConfig } from 'tsup';

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
  },
]);
