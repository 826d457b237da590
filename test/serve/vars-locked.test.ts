// The UEFI variables export when the KMS is down (issue 12): a state file whose key provider cannot be
// reached is served *locked*, as a disk is (locked.ts): listed with its reason, every client refused
// with the locked error, its lock held; it is unlocked by unlock() with a recovery passphrase, or by
// the host's retries once the KMS is back — then read and written as usual. A real PyKMIP server,
// stopped once and started again once.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type NbdHost } from '../../src/index.js';
import { KmipKeyProvider } from '../../src/kmip/index.js';
import { acquireLock } from '../../src/pipeline/lock.js';
import { decryptStateFile, encryptStateFile } from '../../src/vm/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';
import { random } from './helpers.js';
import { CMD, OPT, REP_ERR_UNKNOWN, RawClient } from './nbd-client.js';

const VARS_BYTES = 540_672;
const RECOVERY = 'vars-locked-recovery-passphrase';
const FAST_RETRY = { initialMs: 20, maxMs: 200 };

let kms: PyKmip;
let tmp: ReturnType<typeof tempDir>;
const providers: KmipKeyProvider[] = [];
const hosts: NbdHost[] = [];
let n = 0;

function provider(): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('kms1'), timeoutMs: 2000 });
  providers.push(p);
  return p;
}

/** A state file locked by a KMIP KEK and a recovery passphrase, and its plaintext. */
async function varsFile(maker: KmipKeyProvider, keyId: string): Promise<{ path: string; plain: Buffer }> {
  const dir = join(tmp.dir, `v${++n}`);
  mkdirSync(dir);
  const plain = random(VARS_BYTES);
  writeFileSync(join(dir, 'plain'), plain);
  const path = join(dir, 'OVMF_VARS.fd');
  await encryptStateFile(join(dir, 'plain'), path, { lockers: [{ kind: 'provider', provider: maker, keyId }, phraseLocker(RECOVERY)] });
  writeFileSync(join(dir, 'plain'), '');
  return { path, plain };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 20));
}

async function readAll(socket: string, name: string): Promise<Buffer> {
  const c = await RawClient.connect(socket);
  try {
    await c.go(name);
    const r = await c.request(CMD.READ, 0, VARS_BYTES);
    expect(r.error).toBe(0);
    return r.data;
  } finally {
    c.close();
  }
}

let files: Array<{ path: string; plain: Buffer }>;

beforeAll(async () => {
  tmp = tempDir('vmseal-vars-locked-');
  kms = await startPyKmip();
  const maker = provider();
  const keyId = (await maker.createKey()).keyId;
  files = [await varsFile(maker, keyId), await varsFile(maker, keyId)];
  await kms.stopNode(0, { graceMs: 0 });
}, 60_000);

afterAll(async () => {
  for (const h of hosts) await h.close().catch(() => undefined);
  for (const p of providers) await p.close();
  await kms?.stop();
  tmp?.cleanup();
});

describe('a UEFI variables export whose KMS is down', () => {
  it(
    'is listed locked, refuses clients with the reason, holds its lock, and is unlocked by a recovery passphrase or the KMS coming back',
    { timeout: 120_000 },
    async () => {
      const started: Array<{ host: NbdHost; socket: string }> = [];
      for (const f of files) {
        const socket = join(tmp.dir, `nbd${++n}.sock`);
        const host = await serve({
          disks: [{ path: f.path, name: 'vm1-vars' }],
          listen: { socket },
          keys: { providers: [provider()] },
          unlockRetry: FAST_RETRY,
        });
        hosts.push(host);
        started.push({ host, socket });
        const info = host.exports()[0]!;
        expect(info).toMatchObject({ name: 'vm1-vars', size: VARS_BYTES, encrypted: true, locked: true, sparse: false });
        expect(info.lockedReason).toMatch(/unavailable/);
        // A client that picks it gets the locked error (NBD_REP_ERR_UNKNOWN with the reason).
        const c = await RawClient.connect(socket);
        await c.handshake();
        c.sendOption(OPT.GO, RawClient.nameData('vm1-vars'));
        const replies = await c.optionReplies();
        const last = replies[replies.length - 1]!;
        c.close();
        expect(last.type).toBe(REP_ERR_UNKNOWN);
        expect(last.data.toString('utf8')).toMatch(/^disk locked: key .* unavailable/);
        // The file's lock is held meanwhile: no job takes it.
        await expect(acquireLock(f.path, 'test', 'exclusive')).rejects.toMatchObject({ code: 'ERR_DISK_BUSY' });
      }

      // 1. The recovery passphrase unlocks the first at once.
      const [a, b] = started as [(typeof started)[0], (typeof started)[0]];
      expect(await a.host.unlock('vm1-vars', { passphrase: RECOVERY })).toMatchObject({ locked: false });
      expect((await readAll(a.socket, 'vm1-vars')).equals(files[0]!.plain)).toBe(true);

      // 2. The second waits for the KMS: its retries unlock it once the KMS is back; then it is written.
      expect(b.host.exports()[0]!.locked).toBe(true);
      await kms.startNode(0);
      await until(() => b.host.exports()[0]!.locked !== true);
      expect((await readAll(b.socket, 'vm1-vars')).equals(files[1]!.plain)).toBe(true);
      const c = await RawClient.connect(b.socket);
      await c.go('vm1-vars');
      const w = await c.request(CMD.WRITE, 4096, 20, 0, Buffer.from('written after unlock'));
      expect(w.error).toBe(0);
      expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
      c.close();
      const out = join(tmp.dir, 'dec');
      await decryptStateFile(files[1]!.path, out, { keys: { passphrase: RECOVERY } });
      expect(
        readFileSync(out)
          .subarray(4096, 4096 + 20)
          .toString('latin1'),
      ).toBe('written after unlock');
    },
  );
});
