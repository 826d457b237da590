// The fixed cost of `vmseal encrypt`: what one run does to the local keystore, seen from outside by
// strace (every file a process opens is an openat). An encrypt makes its disk a new KEK — one
// locked read-modify-write of keystore.json — and then seals the DEK under it: the keystore is read
// once for both (the provider knows the file it has just written), the master key file once.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BIN, cleanEnv } from './run-cli.js';

const hasStrace = spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0;

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vmseal-fixed-cost-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** Run the CLI under strace; the openat calls (all threads) that name a file under `home`. */
function opensUnder(home: string, args: string[]): { code: number | null; opens: string[] } {
  const log = join(dir, 'strace.txt');
  const r = spawnSync('strace', ['-f', '-qq', '-e', 'trace=openat', '-o', log, process.execPath, BIN, ...args], {
    env: cleanEnv({ VMSEAL_HOME: home, NODE_EXTRA_CA_CERTS: undefined }),
    encoding: 'utf8',
    timeout: 60_000,
  });
  if (r.status !== 0) throw new Error(`vmseal ${args.join(' ')} failed: ${r.stderr}`);
  const opens = readFileSync(log, 'utf8')
    .split('\n')
    .filter((l) => l.includes(`"${home}/`) && !l.includes('ENOENT'));
  return { code: r.status, opens };
}

describe.skipIf(!hasStrace)('vmseal encrypt and the local keystore', () => {
  it('reads keystore.json and master.key once each, and writes the keystore once', () => {
    const home = join(dir, 'home');
    mkdirSync(home, { mode: 0o700 });
    execFileSync(process.execPath, [BIN, 'keys', 'init'], { env: cleanEnv({ VMSEAL_HOME: home }) });
    // Keys of earlier disks: each read of the keystore parses all of them.
    for (let i = 0; i < 2; i++) execFileSync(process.execPath, [BIN, 'keys', 'create'], { env: cleanEnv({ VMSEAL_HOME: home }) });
    const raw = join(dir, 'in.img');
    writeFileSync(raw, Buffer.alloc(64 * 1024, 7));
    const { opens } = opensUnder(home, ['encrypt', raw, join(dir, 'out.vmdk'), '--subformat', 'monolithicFlat']);
    const reads = (name: string) => opens.filter((l) => l.includes(`/${name}"`) && l.includes('O_RDONLY'));
    expect(reads('keystore.json')).toHaveLength(1);
    expect(reads('master.key')).toHaveLength(1);
    // The new KEK: one temp file renamed over keystore.json.
    expect(opens.filter((l) => /keystore\.json\.tmp-/.test(l))).toHaveLength(1);
    const keys = JSON.parse(readFileSync(join(home, 'keystore.json'), 'utf8')).keys as unknown[];
    expect(keys).toHaveLength(3);
  });

  it('creates a missing keystore and the disk key in one go, and the disk opens', () => {
    const home = join(dir, 'fresh');
    const raw = join(dir, 'in.img');
    writeFileSync(raw, Buffer.alloc(64 * 1024, 9));
    const out = join(dir, 'out.vmdk');
    const { opens } = opensUnder(home, ['encrypt', raw, out, '--subformat', 'monolithicFlat']);
    expect(opens.filter((l) => /keystore\.json\.tmp-/.test(l))).toHaveLength(1);
    const keys = JSON.parse(readFileSync(join(home, 'keystore.json'), 'utf8')).keys as unknown[];
    expect(keys).toHaveLength(1);
    const verify = spawnSync(process.execPath, [BIN, 'verify', out, '--against', raw], { env: cleanEnv({ VMSEAL_HOME: home }), encoding: 'utf8' });
    expect(verify.status, verify.stderr).toBe(0);
  });
});

describe('vmseal encrypt and the native addon', () => {
  it('loads the source build of the addon without node-gyp-build, once', () => {
    const preload = join(dir, 'record.cjs');
    const out = join(dir, 'loaded.json');
    writeFileSync(preload, `process.on('exit', () => require('node:fs').writeFileSync(${JSON.stringify(out)}, JSON.stringify(Object.keys(require.cache))));\n`);
    const raw = join(dir, 'in.img');
    writeFileSync(raw, Buffer.alloc(64 * 1024, 3));
    const r = spawnSync(process.execPath, ['--require', preload, BIN, 'encrypt', raw, join(dir, 'out.vmdk'), '--subformat', 'monolithicFlat'], {
      env: cleanEnv({ VMSEAL_HOME: join(dir, 'home') }),
      encoding: 'utf8',
    });
    expect(r.status, r.stderr).toBe(0);
    const loaded = JSON.parse(readFileSync(out, 'utf8')) as string[];
    expect(loaded.filter((f) => f.endsWith('.node'))).toHaveLength(1);
    expect(loaded.filter((f) => f.includes('node-gyp-build'))).toEqual([]);
  });
});
