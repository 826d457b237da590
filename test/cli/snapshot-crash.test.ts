// SIGKILL of `vmseal snapshot create` at every durable call (test/serve/fixtures/snapshot-kill-cli.ts
// runs the built CLI with the kill switch of the serve crash tests), plain and encrypted: what is left needs
// no manual step. Either the child is in place — whole: it opens and reads the base's content, and the
// base is its read-only parent — or there is no child, and `vmseal snapshot create` run again takes
// the snapshot: a base the killed run had made read-only is made writable again first and the
// temporary child it left is removed (src/vmdk/pending-snapshot.ts).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleFixture } from '../helpers/bundle.js';
import { tempDir } from '../disk/helpers.js';
import { CAPACITY, makeBase, openCode, pendingChildren, plaintext, readOnlyFile, type Flavor } from '../serve/chain-crash.js';
import { PASSPHRASE } from '../serve/helpers.js';
import { cleanEnv, vmseal } from './run-cli.js';

let tmp: ReturnType<typeof tempDir>;
let fixture: string;
let n = 0;
const CLI_MAIN = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

beforeAll(async () => {
  tmp = tempDir('vmseal-snapshot-crash-');
  fixture = await bundleFixture(new URL('../serve/fixtures/snapshot-kill-cli.ts', import.meta.url));
});
afterAll(() => {
  tmp?.cleanup();
  if (fixture) rmSync(fixture, { force: true });
});

const keyArgs = (flavor: Flavor): string[] => (flavor === 'encrypted' ? ['--recovery-passphrase'] : []);

/** `vmseal snapshot create` of a new base, killed at its `killAt`-th durable call (0: never). */
async function createIn(flavor: Flavor, killAt: number) {
  const dir = join(tmp.dir, `${flavor}-${++n}`);
  mkdirSync(dir, { mode: 0o700 });
  const model = Buffer.alloc(CAPACITY);
  randomBytes(1 << 20).copy(model);
  const disk = await makeBase(dir, flavor, model.subarray(0, 1 << 20));
  const env = cleanEnv({ VMSEAL_HOME: join(dir, 'home'), VMSEAL_PASSPHRASE: PASSPHRASE });
  const events = join(dir, 'events.json');
  const child = spawn(process.execPath, [fixture], {
    env: { ...env, CLI_MAIN, ARGS: JSON.stringify(['snapshot', 'create', disk, ...keyArgs(flavor)]), KILL_AT: String(killAt), EVENTS: events },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += String(d)));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((done) => child.on('close', (c, s) => done([c, s])));
  return {
    dir,
    disk,
    env,
    model,
    code,
    signal,
    stderr,
    child: join(dir, 'vm-000001.vmdk'),
    events: existsSync(events) ? (JSON.parse(readFileSync(events, 'utf8')) as string[]) : [],
  };
}

async function checkKills(flavor: Flavor): Promise<string[]> {
  const dry = await createIn(flavor, 0);
  expect(dry.code, dry.stderr).toBe(0);
  expect(existsSync(dry.child)).toBe(true);
  expect(pendingChildren(dry.disk)).toEqual([]);
  expect(
    dry.events.some((e) => e === 'r:vm-000001.vmdk'),
    dry.events.join(' '),
  ).toBe(true);
  const outcomes: string[] = [];
  for (let point = 1; point <= dry.events.length; point++) {
    const label = `${flavor}, snapshot create killed at call ${point} (${dry.events[point - 1]})`;
    const r = await createIn(flavor, point);
    expect(r.signal, `${label}: ${r.stderr}`).toBe('SIGKILL');
    if (existsSync(r.child)) {
      expect(readOnlyFile(r.disk), label).toBe(true);
      expect(pendingChildren(r.disk), label).toEqual([]);
      expect(await openCode(r.child, flavor), label).toBeUndefined();
      expect((await plaintext(r.child, flavor)).equals(r.model), `child content, ${label}`).toBe(true);
      outcomes.push(`${label}: child in place`);
      continue;
    }
    const undone = readOnlyFile(r.disk);
    const again = await vmseal(['snapshot', 'create', r.disk, ...keyArgs(flavor)], r.env);
    expect(again.code, `snapshot create again, ${label}: ${again.stderr}`).toBe(0);
    expect(again.stdout.trim(), label).toBe(r.child);
    expect(pendingChildren(r.disk), `leftovers, ${label}`).toEqual([]);
    expect((await plaintext(r.child, flavor)).equals(r.model), `new child content, ${label}`).toBe(true);
    expect((await plaintext(r.disk, flavor)).equals(r.model), `base content, ${label}`).toBe(true);
    outcomes.push(`${label}: no child${undone ? ', base undone' : ''}; taken again`);
  }
  return outcomes;
}

describe('SIGKILL of `vmseal snapshot create`', () => {
  it.each(['plain', 'encrypted'] as const)(
    '%s: the child is in place and whole, or the command run again takes the snapshot (no manual step)',
    async (flavor) => {
      const outcomes = await checkKills(flavor);
      for (const kind of [/: no child; taken again/, /: no child, base undone; taken again/, /: child in place/]) {
        expect(
          outcomes.some((o) => kind.test(o)),
          `${String(kind)}:\n${outcomes.join('\n')}`,
        ).toBe(true);
      }
    },
    60_000,
  );
});
