// The transitions of a locked export, made deterministic with a key provider whose answers the test
// sets and can hold (test/serve/outage.test.ts does the same against a real PyKMIP server, but cannot
// pause a KMS in the middle of an answer): close() during a retry in flight, a retry that gets a hard
// error, unlock() racing a retry.
import { describe, it, expect, beforeAll, afterAll, afterEach } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createEncryptedDisk, KmipError, serve, type KeyProvider, type KeyRef, type NbdHost } from '../../src/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const MiB = 1 << 20;
const RECOVERY = 'locked-test-recovery';

/**
 * A KMS in memory. `mode`: 'up' answers, 'down' fails as an unreachable KMIP cluster does, 'refusing'
 * as a KMS that answers with a failure. While `hold` is set, getKey waits for `release()` first.
 */
class TestKms implements KeyProvider {
  readonly id = 'testkms';
  readonly #keys = new Map<string, Buffer>();
  mode: 'up' | 'down' | 'refusing' = 'up';
  hold = false;
  /** getKey calls waiting on `hold`. */
  waiting = 0;
  #release: Array<() => void> = [];

  async createKey(): Promise<KeyRef> {
    const keyId = `k${this.#keys.size + 1}`;
    this.#keys.set(keyId, randomBytes(32));
    return { providerId: this.id, keyId };
  }

  async getKey(keyId: string): Promise<Buffer> {
    if (this.hold) {
      this.waiting++;
      await new Promise<void>((r) => this.#release.push(r));
      this.waiting--;
    }
    if (this.mode === 'down')
      throw new KmipError('ERR_KMS_UNAVAILABLE', 'KMIP Get: no KMS node answered (1 tried): could not connect to 127.0.0.1:5696 [ERR_KMIP_CONNECT]');
    if (this.mode === 'refusing') throw new KmipError('ERR_KMIP_OPERATION_FAILED', `KMIP Get: ItemNotFound: no key ${keyId}`);
    return Buffer.from(this.#keys.get(keyId)!);
  }

  release(): void {
    this.hold = false;
    for (const r of this.#release.splice(0)) r();
  }

  async destroyKey(keyId: string): Promise<void> {
    this.#keys.delete(keyId);
  }
}

let tmp: ReturnType<typeof tempDir>;
const hosts: NbdHost[] = [];
let n = 0;

beforeAll(() => {
  tmp = tempDir('vmseal-serve-locked-');
});
afterEach(async () => {
  for (const h of hosts.splice(0)) await h.close().catch(() => undefined);
});
afterAll(() => tmp?.cleanup());

async function setup(): Promise<{ kms: TestKms; path: string; host: NbdHost; socket: string; lines: string[]; data: Buffer }> {
  const kms = new TestKms();
  const path = join(tmp.dir, `d${++n}.vmdk`);
  const data = randomBytes(4096);
  const d = await createEncryptedDisk(path, {
    capacity: MiB,
    subformat: 'monolithicSparse',
    lockers: [{ kind: 'provider', provider: kms }, phraseLocker(RECOVERY)],
  });
  await d.write(0, data);
  await d.close();
  kms.mode = 'down';
  const socket = join(tmp.dir, `s${n}.sock`);
  const lines: string[] = [];
  const host = await serve({
    disks: [{ path, name: 'd' }],
    listen: { socket },
    keys: { providers: [kms] },
    unlockRetry: { initialMs: 10, maxMs: 40 },
    log: (l) => lines.push(l),
  });
  hosts.push(host);
  expect(host.exports()[0]).toMatchObject({
    locked: true,
    lockedReason: expect.stringMatching(/^key k1 of provider testkms unavailable: KMIP Get: no KMS node answered/),
  });
  return { kms, path, host, socket, lines, data };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

describe('locked export transitions', () => {
  it('close() during a retry in flight: the disk opened meanwhile is closed, never served, and the lock released', async () => {
    const { kms, path, host, lines } = await setup();
    kms.hold = true;
    kms.mode = 'up';
    await until(() => kms.waiting > 0);
    const closing = host.close();
    kms.release();
    await closing;
    expect(lines.filter((l) => l.includes('unlocked'))).toEqual([]);
    await (await acquireLock(path, 'test', 'exclusive')).release();
    await expect(host.unlock('d', { passphrase: RECOVERY })).rejects.toMatchObject({ code: 'ERR_SERVE_CLOSED' });
  });

  it('a retry answered with a hard error keeps the export locked with that reason; the next answer unlocks it', async () => {
    const { kms, host, socket, lines, data } = await setup();
    kms.mode = 'refusing';
    await until(() => /^cannot unlock: /.test(host.exports()[0]!.lockedReason ?? ''));
    expect(host.exports()[0]).toMatchObject({ locked: true, lockedReason: expect.stringMatching(/ItemNotFound/) });
    expect(lines.some((l) => /^export d still locked: cannot unlock: /.test(l))).toBe(true);
    kms.mode = 'up';
    await until(() => !host.exports()[0]!.locked);
    expect(lines).toContain('export d unlocked');
    const c = await RawClient.connect(socket);
    await c.go('d');
    expect((await c.request(CMD.READ, 0, data.length)).data.equals(data)).toBe(true);
    c.close();
  });

  it('unlock() queued behind a retry that succeeds: ERR_SERVE_NOT_LOCKED, the export served once', async () => {
    const { kms, host, lines } = await setup();
    kms.hold = true;
    kms.mode = 'up';
    await until(() => kms.waiting > 0);
    const unlocking = host.unlock('d', { passphrase: RECOVERY });
    kms.release();
    await expect(unlocking).rejects.toMatchObject({ code: 'ERR_SERVE_NOT_LOCKED' });
    expect(host.exports()[0]!.locked).toBe(false);
    expect(lines.filter((l) => l.includes('unlocked'))).toEqual(['export d unlocked']);
  });
});
