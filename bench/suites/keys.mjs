// Key layer: unlock from the host key cache (target ≤ 1 ms), from the local provider, the cost of the
// passphrase KDFs, and the local provider's master-key KDF. See docs/keys.md.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { measure, quick, report } from '../lib.mjs';

const vm = await import(process.env.VMSEAL_DIST ?? new URL('../../dist/index.js', import.meta.url).href);

// An in-memory provider: isolates the key layer's own cost from any server.
class MemoryProvider {
  id = 'mem';
  keys = new Map();
  async createKey() {
    const keyId = randomUUID();
    this.keys.set(keyId, randomBytes(32));
    return { providerId: this.id, keyId };
  }
  async getKey(keyId) {
    return Buffer.from(this.keys.get(keyId));
  }
  async destroyKey(keyId) {
    this.keys.delete(keyId);
  }
}

const msPer = (opsPerSec) => 1000 / opsPerSec;
const fmt = (ms) => (ms < 1 ? ms.toFixed(3) : ms.toFixed(1));

/** Time a single (slow) call, best of n. */
async function once(fn, n = quick ? 1 : 3) {
  let best = Infinity;
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return best;
}

const home = mkdtempSync(join(tmpdir(), 'vmseal-bench-keys-'));
const rows = [];
const kdfRows = [];
let cacheMs;
try {
  const dek = vm.generateDek('aes-256-xts');
  const mem = new MemoryProvider();
  const cache = new vm.KeyCache();
  const memText = await vm.sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: mem }], cache });

  cacheMs = msPer(await measure(async () => (await vm.unlockKeySafe(memText, { cache, providers: [mem] })).key.fill(0)));
  rows.push(['unlock from the key cache (provider not called)', fmt(cacheMs)]);
  rows.push([
    'unlock from an in-memory provider (no cache)',
    fmt(msPer(await measure(async () => (await vm.unlockKeySafe(memText, { providers: [mem] })).key.fill(0)))),
  ]);

  const local = new vm.LocalKeyProvider({ home: join(home, 'keyfile') });
  const localText = await vm.sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: local }] });
  rows.push([
    'unlock from the local provider (keystore file read each time, no cache)',
    fmt(msPer(await measure(async () => (await vm.unlockKeySafe(localText, { providers: [local] })).key.fill(0)))),
  ]);
  rows.push([
    'seal a DEK under an existing provider KEK (cached)',
    fmt(
      msPer(
        await measure(async () =>
          vm.sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'provider', provider: mem, keyId: [...mem.keys.keys()][0] }], cache }),
        ),
      ),
    ),
  ]);
  rows.push(['parse + serialize a one-pair KeySafe', fmt(msPer(await measure(async () => vm.KeySafe.parse(memText).toString())))]);

  // Passphrase lockers at their default costs: the time to unlock (one KDF run).
  for (const [label, spec] of [
    ['phrase locker, PBKDF2-HMAC-SHA-256 600,000 rounds (default)', { kdf: 'pbkdf2-sha256' }],
    ['phrase locker, scrypt n=131072 r=8 p=1', { kdf: 'scrypt' }],
    ['phrase locker, Workstation PBKDF2-HMAC-SHA-1 10,000 rounds', { kdf: 'workstation' }],
  ]) {
    const text = await vm.sealDek(dek, { cipher: 'aes-256-xts', lockers: [{ kind: 'passphrase', passphrase: 'bench', ...spec }] });
    kdfRows.push([label, fmt(await once(async () => (await vm.unlockKeySafe(text, { passphrase: 'bench' })).key.fill(0)))]);
  }
  // The local provider's master key: key file (read) vs passphrase (scrypt, default cost).
  kdfRows.push([
    'local provider open, master key file',
    fmt(
      await once(async () => {
        const p = new vm.LocalKeyProvider({ home: join(home, 'keyfile') });
        await p.init();
        await p.close();
      }),
    ),
  ]);
  const pp = new vm.LocalKeyProvider({ home: join(home, 'pass'), passphrase: 'bench' });
  await pp.init();
  await pp.close();
  kdfRows.push([
    'local provider open, passphrase (scrypt n=131072 r=8 p=1)',
    fmt(
      await once(async () => {
        const p = new vm.LocalKeyProvider({ home: join(home, 'pass'), passphrase: 'bench' });
        await p.init();
        await p.close();
      }),
    ),
  ]);
  vm.wipe(dek);
  cache.clear();
} finally {
  rmSync(home, { recursive: true, force: true });
}

report({
  title: 'Keys: unlock and KDF costs',
  notes: [
    'Unlock = parse the KeySafe, fetch the KEK, AES-256-CBC decrypt + HMAC-SHA-256 verify of the key dict, parse the dict.',
    'KDF rows: one unlock (or open) each, best of 3; they run on the libuv thread pool and do not block the event loop.',
    'Target: unlock from the cache ≤ 1 ms (ratio = 1 ms / measured, met when ≥ 1).',
  ],
  tables: [
    { caption: 'Unlock and seal (ms per operation)', columns: ['operation', 'ms'], rows },
    { caption: 'KDF costs (ms)', columns: ['operation', 'ms'], rows: kdfRows },
  ],
  ratios: [{ name: 'cache unlock: 1 ms / measured', value: 1 / cacheMs, target: 1 }],
});
