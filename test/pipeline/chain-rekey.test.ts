// Rekeys of snapshot chains: a shallow rekey gives every layer the new KeySafe as one journaled job
// (killed at any point: refused until resume, then every layer has it); jobs that rewrite data in
// place (deep rekey, encryption in place) are refused on chains with a typed error.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { deepRekey, encryptInPlace, shallowRekey } from '../../src/pipeline/index.js';
import { createEncryptedDisk, createEncryptedSnapshot, openDisk, readEncryptionParams } from '../../src/disk/index.js';
import { createSnapshot, openDisk as openVmdk } from '../../src/vmdk/index.js';
import { bundleFixture } from '../helpers/bundle.js';
import { patternBytes, phraseLocker, sha256, tempDir } from '../disk/helpers.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let child: string;
beforeAll(async () => {
  tmp = tempDir('vmseal-chain-rekey-');
  child = await bundleFixture(new URL('./fixtures/commit-child.ts', import.meta.url));
});
afterAll(() => {
  tmp.cleanup();
  rmSync(child, { force: true });
});

/** base ← vm-000001 ← vm-000002, encrypted under passphrase "old", each layer written. */
async function encryptedChain(dir: string): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const base = join(dir, 'vm.vmdk');
  const d = await createEncryptedDisk(base, { capacity: 4 * MiB, subformat: 'monolithicSparse', lockers: [phraseLocker('old')] });
  await d.write(0, patternBytes(2 * MiB, 1));
  await d.close();
  const layers = [base];
  for (let i = 0; i < 2; i++) {
    const top = await createEncryptedSnapshot(layers[layers.length - 1], { keys: { passphrase: 'old' } });
    const c = await openDisk(top, { keys: { passphrase: 'old' } });
    await c.write((i + 1) * MiB + 512, patternBytes(300_000, 10 + i));
    await c.close();
    layers.push(top);
  }
  return layers;
}

async function opensWith(path: string, passphrase: string): Promise<boolean> {
  try {
    const d = await openDisk(path, { readOnly: true, keys: { passphrase } });
    await d.close();
    return true;
  } catch {
    return false;
  }
}

async function contentOf(path: string, passphrase: string): Promise<string> {
  const d = await openDisk(path, { readOnly: true, keys: { passphrase } });
  try {
    return sha256(await d.read(0, d.capacity));
  } finally {
    await d.close();
  }
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: { code?: string }) => e.code,
  );
}

describe('shallow rekey of a chain', () => {
  it('rewrites every layer\u2019s KeySafe; each layer\u2019s own authenticator and layer ids stay; data intact', async () => {
    const layers = await encryptedChain(join(tmp.dir, 'shallow'));
    const top = layers[2];
    const before = await Promise.all(layers.map((l) => readEncryptionParams(l)));
    const content = await Promise.all(layers.map((l) => contentOf(l, 'old')));
    await shallowRekey(top, { keys: { passphrase: 'old' }, lockers: [phraseLocker('new')] });
    for (const [i, l] of layers.entries()) {
      const after = (await readEncryptionParams(l))!;
      expect(after.keySafe, l).toBe((await readEncryptionParams(top))!.keySafe);
      expect(after.keySafe).not.toBe(before[i]!.keySafe);
      expect(after.authenticator).toBe(before[i]!.authenticator);
      expect(after.layerId).toBe(before[i]!.layerId);
      expect(after.dataCheck).toBe(before[i]!.dataCheck);
      // Each layer opened as the top of its own chain: the new passphrase only.
      expect(await opensWith(l, 'old'), `${l} with the old passphrase`).toBe(false);
      expect(await contentOf(l, 'new')).toBe(content[i]);
    }
    // The layers below the top stay read-only.
    expect(statSync(layers[0]).mode & 0o222).toBe(0);
    expect(statSync(layers[1]).mode & 0o222).toBe(0);
    expect(readdirSync(join(tmp.dir, 'shallow')).filter((f) => /journal|\.tmp|vmseal-lock/.test(f))).toEqual([]);
  });

  it('killed at any point: refused until resume, then every layer has the new KeySafe', async () => {
    const template = join(tmp.dir, 'kill-template');
    const layers = await encryptedChain(template);
    const names = layers.map((l) => l.slice(template.length + 1));
    const content = await contentOf(layers[2], 'old');
    const run = (op: string, disk: string, killAt?: number) =>
      spawnSync(process.execPath, [child, op, disk], {
        env: { ...process.env, PASSPHRASE: 'old', NEW: 'new', ...(killAt ? { KILL_AT: String(killAt) } : {}) },
        encoding: 'utf8',
      });
    const copy = (name: string): string[] => {
      const dir = join(tmp.dir, name);
      cpSync(template, dir, { recursive: true });
      return names.map((n) => join(dir, n));
    };
    const dry = copy('kill-dry');
    const full = run('shallow', dry[2]);
    expect(full.status, full.stderr).toBe(0);
    const total = Number(/events=(\d+)/.exec(full.stdout)![1]);
    let refused = 0;
    for (let point = 1; point < total; point++) {
      const ls = copy(`kill-${point}`);
      expect(run('shallow', ls[2], point).signal, `kill at ${point}`).toBe('SIGKILL');
      if (existsSync(`${ls[2]}.vmseal-journal`)) {
        expect(await codeOf(openDisk(ls[2], { readOnly: true, keys: { passphrase: 'old' } }))).toBe('ERR_INTERRUPTED_JOB');
        refused++;
        // resume with the old passphrase: the journal's DEK is the same (a shallow rekey keeps it)
        const r = spawnSync(process.execPath, [child, 'resume', ls[2]], { env: { ...process.env, PASSPHRASE: 'old' }, encoding: 'utf8' });
        expect(r.status, `resume after kill at ${point}: ${r.stderr}`).toBe(0);
      }
      // Every layer opens with the same one passphrase: all old (nothing done) or all new.
      const news = await Promise.all(ls.map((l) => opensWith(l, 'new')));
      const olds = await Promise.all(ls.map((l) => opensWith(l, 'old')));
      expect(new Set(news).size, `after kill at ${point}: new ${news}, old ${olds}`).toBe(1);
      expect(news.map((n, i) => n !== olds[i])).toEqual([true, true, true]);
      expect(await contentOf(ls[2], news[0] ? 'new' : 'old')).toBe(content);
    }
    expect(refused).toBeGreaterThan(0);
  });
});

describe('jobs that rewrite data in place are refused on chains', () => {
  // A deep rekey in copy mode re-encrypts the whole chain (chain-deep-rekey.test.ts).
  it('deep rekey in place of a chain\u2019s top or of a layer with children: ERR_SNAPSHOT_CHAIN, nothing changed', async () => {
    const layers = await encryptedChain(join(tmp.dir, 'deep'));
    const keys = { passphrase: 'old' };
    for (const l of [layers[2], layers[1], layers[0]]) {
      const before = await readEncryptionParams(l);
      expect(await codeOf(deepRekey(l, { keys, lockers: [phraseLocker('new')], inPlace: true })), l).toBe('ERR_SNAPSHOT_CHAIN');
      expect(await readEncryptionParams(l)).toEqual(before);
    }
    expect(await opensWith(layers[2], 'old')).toBe(true);
  });

  it('encryption in place of a plain chain\u2019s top: ERR_SNAPSHOT_CHAIN', async () => {
    const dir = join(tmp.dir, 'plain');
    mkdirSync(dir);
    const base = join(dir, 'p.vmdk');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
    const top = await createSnapshot(base);
    expect(await codeOf(encryptInPlace(top, { lockers: [phraseLocker('pw')] }))).toBe('ERR_SNAPSHOT_CHAIN');
    const d = await openVmdk(top, { readOnly: true });
    await d.close();
  });
});
