// The key bridge between a batch's main thread and its workers, over a real MessageChannel with a
// real local keystore: errors cross threads as the CLI would have classified them, KEKs come from
// the main thread's one session (fetched once), and only the providers offered are served.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { MessageChannel } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { VmsealError } from '../../src/errors.js';
import { describeFailure } from '../../src/cli/batch.js';
import { makeCtx } from '../../src/cli/context.js';
import { CliError } from '../../src/cli/errors.js';
import { ExitCode } from '../../src/cli/exit-codes.js';
import { BridgeKeys, fromWireError, KeyDesk, toWireError, type KeyReply, type KeyRequest } from '../../src/cli/key-bridge.js';
import { KeySession } from '../../src/cli/key-session.js';
import { Output } from '../../src/cli/output.js';
import type { KeyProvider, LockerSpec } from '../../src/keys/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-key-bridge-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function session(home: string): KeySession {
  const ctx = makeCtx({
    output: new Output({ quiet: true }),
    signal: new AbortController().signal,
    env: {},
    io: { input: new PassThrough(), output: new PassThrough() },
  });
  return new KeySession(ctx, { home });
}

/** A BridgeKeys on one end of a MessageChannel, answered by a KeyDesk on the other; counts requests by op. */
function bridge(desk: KeyDesk): { keys: BridgeKeys; asked: Record<string, number>; close: () => void } {
  const { port1: mainSide, port2: workerSide } = new MessageChannel();
  const asked: Record<string, number> = {};
  mainSide.on('message', (req: KeyRequest) => {
    asked[req.op] = (asked[req.op] ?? 0) + 1;
    void desk.answer(req).then(({ reply, transfer }) => mainSide.postMessage(reply, transfer));
  });
  const keys = new BridgeKeys((req) => workerSide.postMessage(req), false);
  workerSide.on('message', (reply: KeyReply) => keys.onReply(reply));
  return {
    keys,
    asked,
    close: () => {
      keys.close();
      mainSide.close();
      workerSide.close();
    },
  };
}

describe('key bridge', () => {
  it('carries errors across threads as the CLI classifies them', async () => {
    const system = await stat(join(dir, 'missing')).catch((e: unknown) => e);
    const abort = Object.assign(new Error('interrupted'), { name: 'AbortError' });
    const errors: unknown[] = [
      new CliError('ERR_OUTPUT_EXISTS', 'the output /o/x.vmdk already exists', { exitCode: ExitCode.FAILURE, hint: 'Add --force to replace it' }),
      new VmsealError('ERR_DISK_LOCKED', "the disk is locked: key 'k' of provider 'local' cannot be fetched"),
      new VmsealError('ERR_KMIP_TIMEOUT', 'the key server did not answer'),
      system,
      abort,
      'a thrown string',
    ];
    for (const err of errors) {
      const again = fromWireError(structuredClone(toWireError(err)));
      expect(describeFailure(again, undefined)).toEqual(describeFailure(err, undefined));
    }
    expect(describeFailure(fromWireError(toWireError(abort)), undefined)).toBeUndefined();
  });

  it("serves the batch's lockers and KEKs from the main thread's session, each KEK fetched once", async () => {
    const keys = session(join(dir, 'home'));
    const provider = await keys.local();
    const { keyId } = await provider.createKey({ name: 'batch' });
    // The real keystore provider, counting its KEK fetches.
    let fetched = 0;
    const counting: KeyProvider = {
      id: provider.id,
      createKey: (o) => provider.createKey(o),
      destroyKey: (k) => provider.destroyKey(k),
      getKey: (k) => (fetched++, provider.getKey(k)),
    };
    let made = 0;
    const lockers = async (): Promise<LockerSpec[]> => (made++, [{ kind: 'provider', provider: counting, keyId }]);
    const desk = new KeyDesk(keys, lockers);
    const b = bridge(desk);
    try {
      const specs = await b.keys.newLockers();
      expect(await b.keys.newLockers()).toBe(specs);
      expect(made).toBe(1);
      const spec = specs[0]!;
      if (spec.kind !== 'provider') throw new Error('expected a provider locker');
      expect(spec.provider).not.toBe(counting);
      expect([spec.provider.id, spec.keyId]).toEqual([provider.id, keyId]);
      // Two images asking at once: both get the KEK, the keystore is read for it once (the session's cache).
      const [a, c] = await Promise.all([spec.provider.getKey(keyId), spec.provider.getKey(keyId)]);
      const real = await provider.getKey(keyId);
      expect(a.equals(real) && c.equals(real)).toBe(true);
      expect(fetched).toBe(1);
      expect(keys.cache.has(counting, keyId)).toBe(true);
      expect(b.asked).toEqual({ lockers: 1, kek: 2 });
      // A key the keystore does not hold fails in the worker with the provider's own error code.
      await expect(spec.provider.getKey('no-such-key')).rejects.toMatchObject({ code: 'ERR_KEYSTORE_NO_SUCH_KEY' });
    } finally {
      b.close();
      await keys.close();
    }
  });

  it('refuses a KEK of a provider that was not offered to the workers', async () => {
    const keys = session(join(dir, 'home-2'));
    const desk = new KeyDesk(keys, async () => []);
    const { reply } = await desk.answer({ type: 'key', rid: 7, op: 'kek', providerId: 'local', keyId: 'k' });
    expect(reply).toMatchObject({ type: 'key-reply', rid: 7, ok: false });
    await keys.close();
  });
});
