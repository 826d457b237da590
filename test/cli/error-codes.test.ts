// Every error code a layer declares has an exit code (the CLI's table is typed against the union of
// the layers' code types, so that part is checked by tsc) and a row in docs/errors.md that gives the
// same exit code. A new code thus cannot ship undocumented.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify, exitCodeOf, LAYER_ERROR_CODES } from '../../src/cli/errors.js';
import { ExitCode } from '../../src/cli/exit-codes.js';
import { VmsealError } from '../../src/errors.js';

const root = join(import.meta.dirname, '..', '..');
const docs = readFileSync(join(root, 'docs', 'errors.md'), 'utf8');

/** Every 'ERR_…' literal in the layers' sources and the native addon (the XTS codes are plain strings). */
function codesInSources(): string[] {
  const files = ['xts', 'kmip', 'keys', 'vmdk', 'disk', 'pipeline', 'backup', 'vm', 'util', 'serve'].flatMap((layer) =>
    readdirSync(join(root, 'src', layer), { recursive: true, encoding: 'utf8' })
      .filter((f) => f.endsWith('.ts'))
      .map((f) => join(root, 'src', layer, f)),
  );
  files.push(
    ...readdirSync(join(root, 'native'))
      .filter((f) => f.endsWith('.cc'))
      .map((f) => join(root, 'native', f)),
  );
  const codes = new Set<string>();
  for (const file of files) for (const m of readFileSync(file, 'utf8').matchAll(/['"`](ERR_[A-Z0-9_]+)['"`]/g)) codes.add(m[1]!);
  return [...codes].sort();
}

/** The exit code docs/errors.md gives a code: its row is "| `CODE` | N | …". */
function documentedExitCode(code: string): number | undefined {
  const row = new RegExp(`^\\|\\s*\`${code}\`\\s*\\|\\s*(\\d+)\\s*\\|`, 'm').exec(docs);
  return row ? Number(row[1]) : undefined;
}

describe('error codes', () => {
  it('covers the codes of every layer', () => {
    expect(LAYER_ERROR_CODES.length).toBeGreaterThan(50);
    for (const code of ['ERR_INVALID_ARG_TYPE', 'ERR_KMS_UNAVAILABLE', 'ERR_WRONG_KEY', 'ERR_VMDK_FORMAT', 'ERR_CLOSED', 'ERR_JOURNAL'] as const) {
      expect(LAYER_ERROR_CODES).toContain(code);
    }
  });

  it('includes every code the layers and the native addon throw, typed or not', () => {
    expect(codesInSources().filter((c) => !(LAYER_ERROR_CODES as string[]).includes(c))).toEqual([]);
  });

  it.each(LAYER_ERROR_CODES)('%s is in docs/errors.md with its exit code', (code) => {
    expect(documentedExitCode(code)).toBe(exitCodeOf(code));
  });

  it('documents no code the layers do not have', () => {
    const documented = [...docs.matchAll(/^\|\s*`(ERR_[A-Z0-9_]+)`/gm)].map((m) => m[1]);
    expect(documented.filter((c) => !(LAYER_ERROR_CODES as string[]).includes(c!))).toEqual([]);
  });

  it('classify() gives each code its table exit code', () => {
    for (const code of LAYER_ERROR_CODES) {
      expect(classify(new VmsealError(code, 'x')).exitCode).toBe(exitCodeOf(code));
    }
  });

  it('a code no layer declares still gets an exit code by its family', () => {
    expect(classify(new VmsealError('ERR_VMDK_SOMETHING_NEW', 'x')).exitCode).toBe(ExitCode.FORMAT);
    expect(classify(new VmsealError('ERR_SOMETHING_NEW', 'x')).exitCode).toBe(ExitCode.FAILURE);
    expect(classify(new VmsealError('toString', 'x')).exitCode).toBe(ExitCode.FAILURE);
  });
});
