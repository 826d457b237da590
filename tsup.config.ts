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
    entry: { main: 'src/cli/main.ts' },
    outDir: 'dist/cli',
    format: ['esm'],
    sourcemap: true,
    clean: false,
    shims: true,
    target: 'node20',
    platform: 'node',
  },
]);
