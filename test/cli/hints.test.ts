// Every hint the CLI prints must name options that exist on the command it names (or the command
// that printed it): a user who follows a hint must never meet "unknown option".
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run } from '../../src/cli/app.js';
import { makeCtx } from '../../src/cli/context.js';
import { Output } from '../../src/cli/output.js';
import { buildProgram } from '../../src/cli/program.js';

const SRC = fileURLToPath(new URL('../../src/cli/', import.meta.url));
const sink = (f: (s: string) => void = () => undefined) =>
  new Writable({
    write(c, _e, cb) {
      f(String(c));
      cb();
    },
  });

function program(): Command {
  const streams = { stdout: sink(), stderr: sink() };
  const ctx = makeCtx({
    output: new Output({ json: false, quiet: true }, streams),
    signal: new AbortController().signal,
    env: {},
    io: { input: new PassThrough(), output: sink() },
  });
  return buildProgram(ctx, streams);
}

/** The command `words` names ("keys init"), or undefined. */
function findCommand(root: Command, words: string[]): Command | undefined {
  let cmd: Command | undefined = root;
  for (const w of words) {
    cmd = cmd?.commands.find((c) => c.name() === w);
    if (!cmd) return undefined;
  }
  return cmd;
}

/** Long options valid on `cmd`: its own and its ancestors' (global flags). */
function optionsOf(cmd: Command): Set<string> {
  const names = new Set<string>(['--help']);
  for (let c: Command | null = cmd; c; c = c.parent) for (const o of c.options) if (o.long) names.add(o.long.replace(/^--no-/, '--'));
  for (let c: Command | null = cmd; c; c = c.parent) for (const o of c.options) if (o.long) names.add(o.long);
  return names;
}

/** The `--options` a text names. */
function optionsNamed(text: string): string[] {
  return [...text.matchAll(/(?<![\w-])--[a-z][a-z0-9-]*/g)].map((m) => m[0]);
}

/** Every "vmseal CMD [SUB] … --opt" in a text: the command words and the options that follow. */
function commandMentions(root: Command, text: string): Array<{ words: string[]; options: string[]; at: string }> {
  const out: Array<{ words: string[]; options: string[]; at: string }> = [];
  for (const m of text.matchAll(/(`?)vmseal ([a-z]+)(?: ([a-z]+))?/g)) {
    const words = [m[2]!];
    if (m[3] !== undefined && findCommand(root, [m[2]!, m[3]])) words.push(m[3]);
    if (!findCommand(root, words)) continue;
    const rest = text.slice(m.index! + m[0].length);
    // Inside backticks the mention ends at the closing one; otherwise at the end of the line or sentence.
    const end = m[1] === '`' ? rest.indexOf('`') : rest.search(/[\n'"(]|\.\s/);
    const span = end === -1 ? rest : rest.slice(0, end);
    out.push({ words, options: optionsNamed(span), at: `vmseal ${words.join(' ')}${span}` });
  }
  return out;
}

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-cli-hints-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function cli(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await run(argv, {
    env,
    streams: { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)) },
    io: { input: new PassThrough(), output: sink() },
    signal: new AbortController().signal,
  });
  return { code, stdout, stderr };
}

/** Every option an error line names must exist on the command that printed it. */
function expectOptionsExist(words: string[], stderr: string): void {
  const root = program();
  const cmd = findCommand(root, words)!;
  const valid = optionsOf(cmd);
  for (const o of optionsNamed(stderr)) expect(valid.has(o), `${o} is not an option of vmseal ${words.join(' ')}: ${stderr}`).toBe(true);
}

describe('hints name options that exist', () => {
  it('every "vmseal CMD … --option" in src/cli names an option of CMD', () => {
    const root = program();
    const bad: string[] = [];
    let seen = 0;
    for (const file of sources(SRC)) {
      for (const mention of commandMentions(root, readFileSync(file, 'utf8'))) {
        seen++;
        const valid = optionsOf(findCommand(root, mention.words)!);
        for (const o of mention.options) if (!valid.has(o)) bad.push(`${file.slice(SRC.length)}: ${o} in "${mention.at.trim()}"`);
      }
    }
    expect(seen).toBeGreaterThan(10);
    expect(bad).toEqual([]);
  });

  it('keys init --with-passphrase without a terminal names --home-passphrase-file / VMSEAL_HOME_PASSPHRASE', async () => {
    const r = await cli(['keys', 'init', '--home', join(dir, 'h1'), '--with-passphrase']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--home-passphrase-file');
    expect(r.stderr).toContain('VMSEAL_HOME_PASSPHRASE');
    expect(r.stderr).not.toMatch(/VMSEAL_PASSPHRASE\b/);
    expectOptionsExist(['keys', 'init'], r.stderr);
  });

  it('keys restore with a wrong backup passphrase blames the backup passphrase', async () => {
    const home = join(dir, 'h2');
    expect((await cli(['keys', 'init', '--home', home])).code).toBe(0);
    const backup = join(dir, 'b.json');
    expect((await cli(['keys', 'backup', backup, '--home', home, '--passphrase-env', 'BK'], { BK: 'backup passphrase' })).code).toBe(0);
    const r = await cli(['keys', 'restore', backup, '--home', join(dir, 'h3')], { VMSEAL_PASSPHRASE: 'wrong passphrase' });
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/backup passphrase/);
    expect(r.stderr).not.toMatch(/keystore passphrase|home-passphrase/);
    expectOptionsExist(['keys', 'restore'], r.stderr);
    const none = await cli(['keys', 'restore', backup, '--home', join(dir, 'h3')]);
    expect(none.code).toBe(2);
    expectOptionsExist(['keys', 'restore'], none.stderr);
  });

  it('a recovery passphrase needed without a terminal names the options of that command', async () => {
    for (const words of [['encrypt'], ['rekey']]) {
      const extra = words[0] === 'encrypt' ? ['--recovery-passphrase'] : ['--shallow', '--add-recovery-passphrase'];
      const r = await cli([...words, join(dir, 'missing.img'), ...(words[0] === 'encrypt' ? [join(dir, 'o.vmdk')] : []), ...extra, '--home', join(dir, 'h4')]);
      expectOptionsExist(words, r.stderr);
    }
  });
});

describe('the hints of the error table', () => {
  it('name only options of each disk command that can print them', async () => {
    const { VmsealError } = await import('../../src/errors.js');
    const { BY_CODE, classify } = await import('../../src/cli/errors.js');
    const root = program();
    const bad: string[] = [];
    for (const command of ['encrypt', 'decrypt', 'convert', 'rekey', 'info', 'verify', 'resume', 'serve']) {
      const valid = optionsOf(findCommand(root, [command])!);
      for (const code of Object.keys(BY_CODE)) {
        const { hint } = classify(new VmsealError(code, 'x'), command);
        // Options inside a quoted `vmseal OTHER …` belong to that command (checked against it above).
        const own = (hint ?? '').replace(/`vmseal [^`]*`/g, '');
        for (const o of optionsNamed(own)) if (!valid.has(o)) bad.push(`${command} ${code}: ${o}`);
      }
    }
    expect(bad).toEqual([]);
  });
});
