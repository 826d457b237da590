// Failover across a two-node "cluster": two PyKMIP servers sharing one database file.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import net from 'node:net';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { KmipError, KmipKeyProvider } from '../../src/kmip/index.js';

let kms: PyKmip;
const providers: KmipKeyProvider[] = [];
function provider(extra: Partial<ConstructorParameters<typeof KmipKeyProvider>[0]> = {}): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('cluster'), timeoutMs: 2000, ...extra });
  providers.push(p);
  return p;
}
const label = (i: number): string => `127.0.0.1:${kms.endpoints[i]!.port}`;

beforeAll(async () => {
  kms = await startPyKmip({ nodes: 2 });
});

afterAll(async () => {
  for (const p of providers) await p.close();
  await kms?.stop();
});

describe('two-node cluster', () => {
  it('both nodes serve the same keys (shared database)', async () => {
    const onlyA = provider({ endpoints: [kms.endpoints[0]!] });
    const onlyB = provider({ endpoints: [kms.endpoints[1]!] });
    const ref = await onlyA.createKey({ name: 'shared' });
    expect((await onlyB.getKey(ref.keyId)).equals(await onlyA.getKey(ref.keyId))).toBe(true);
    expect(await onlyB.getState(ref.keyId)).toBe('Active');
  });

  it('stop one node: getKey still works through the other; stop both: ERR_KMS_UNAVAILABLE naming each node; restart: works again', async () => {
    const p = provider();
    const ref = await p.createKey({ name: 'failover' });
    const key = await p.getKey(ref.keyId);

    await kms.stopNode(0); // graceful (SIGINT; killed after 2 s if sessions stay open)
    expect((await p.getKey(ref.keyId)).equals(key)).toBe(true);
    // new keys can still be made too
    const ref2 = await p.createKey();
    expect(await p.getKey(ref2.keyId)).toHaveLength(32);

    await kms.stopNode(1, { graceMs: 0 }); // like a crash
    let err: KmipError | undefined;
    try {
      await p.getKey(ref.keyId);
    } catch (e) {
      err = e as KmipError;
    }
    expect(err).toBeInstanceOf(KmipError);
    expect(err!.code).toBe('ERR_KMS_UNAVAILABLE');
    expect(err!.operation).toBe('GetAttributes'); // getKey's first request: the State check
    expect(err!.failures!.map((f) => f.endpoint).sort()).toEqual([label(0), label(1)].sort());
    for (const f of err!.failures!) expect(f.code).toBe('ERR_KMIP_CONNECT');
    expect(err!.message).toContain(label(0));
    expect(err!.message).toContain(label(1));
    expect(err!.message).toMatch(/ECONNREFUSED/);
    await expect(p.createKey()).rejects.toMatchObject({ code: 'ERR_KMS_UNAVAILABLE' });

    await kms.startNode(1);
    expect((await p.getKey(ref.keyId)).equals(key)).toBe(true);
    await kms.startNode(0);
    await p.destroyKey(ref2.keyId);
  }, 60_000);

  it('a node that accepts connections but never answers costs one timeout, then the next node answers', async () => {
    const sockets = new Set<net.Socket>();
    const blackHole = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => blackHole.listen(0, '127.0.0.1', () => r()));
    const holePort = (blackHole.address() as net.AddressInfo).port;
    try {
      const p = provider({ endpoints: [{ host: '127.0.0.1', port: holePort }, kms.endpoints[1]!], timeoutMs: 500 });
      const ref = await p.createKey();
      expect(await p.getKey(ref.keyId)).toHaveLength(32);
      // only the hanging node: a timeout, not a hang
      const lone = provider({ endpoints: [{ host: '127.0.0.1', port: holePort }], timeoutMs: 300 });
      await expect(lone.getKey(ref.keyId)).rejects.toMatchObject({
        code: 'ERR_KMS_UNAVAILABLE',
        failures: [{ endpoint: `127.0.0.1:${holePort}`, code: 'ERR_KMIP_TIMEOUT' }],
      });
      await p.destroyKey(ref.keyId);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => blackHole.close(r));
    }
  });
});
