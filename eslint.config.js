// ESLint flat config: eslint's and typescript-eslint's recommended rules plus a few that catch real
// mistakes. Formatting is prettier's job (.prettierrc.json); there are no stylistic rules here.
import js from '@eslint/js';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: ['dist/', 'build/', 'build-cmake/', 'build-sanitize/', 'prebuilds/', 'coverage/', 'node_modules/', 'test/fixtures/', 'bench/results/'],
  },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: {
      ecmaVersion: 2022,
      sourceType: 'module',
      globals: { ...globals.node },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // `x == null` (null or undefined) is the one loose comparison allowed.
      eqeqeq: ['error', 'always', { null: 'ignore' }],
      'no-var': 'error',
      'prefer-const': 'error',
      // Noise here: the validators match control characters on purpose, to reject them in key ids,
      // descriptor text and file names.
      'no-control-regex': 'off',
      // Noise here: it flags deliberate initial values (`let ok = false` before a try whose catch
      // rethrows) and the last `out[o++]` of a write cursor, which the code keeps for uniformity.
      'no-useless-assignment': 'off',
    },
  },
  {
    // bin/vmseal.js is CommonJS (bin/package.json): an ES-module entry would start Node's ES-module
    // loader for one file at every `vmseal` (docs/performance.md, "CLI start-up").
    files: ['bin/**/*.js'],
    languageOptions: { sourceType: 'commonjs' },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
  {
    files: ['test/**'],
    rules: {
      // Tests index into parsed --json output and reach into objects on purpose.
      '@typescript-eslint/no-explicit-any': 'off',
    },
  },
);
