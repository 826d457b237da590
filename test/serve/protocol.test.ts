// The NBD server at the protocol level, with a raw-socket client: negotiation, commands, error
// replies for bad requests, and bad clients that must not disturb the others.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { mkdirSync } from 'node:fs';
import type { NbdHost } from '../../src/index.js';
import { tempDir } from '../disk/helpers.js';
import { encryptedDisk, plainRaw, random, startHost } from './helpers.js';
import {
  CMD,
  EINVAL,
  ENOSPC,
  ENOTSUP,
  EOVERFLOW,
  EPERM,
  FLAG,
  OPT,
  RawClient,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_POLICY,
  REP_ERR_TOO_BIG,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_META_CONTEXT,
  REP_SERVER,
} from './nbd-client.js';

const MiB = 1 << 20;
let tmp: ReturnType<typeof tempDir>;
let host: NbdHost;
let socket: string;
const clients: RawClient[] = [];
const flatContent = random(4 * MiB);
const plainContent = random(MiB);
/** What the sparse export holds at 2 MiB (one 64 KiB grain); the rest of it is holes. */
const sparseHead = random(64 * 1024);

async function client(): Promise<RawClient> {
  const c = await RawClient.connect(socket);
  clients.push(c);
  return c;
}

beforeAll(async () => {
  tmp = tempDir('vmseal-serve-proto-');
  const flat = await encryptedDisk(tmp.dir, 'flat', { subformat: 'monolithicFlat', capacity: 4 * MiB, content: flatContent });
  const sparse = await encryptedDisk(tmp.dir, 'sparse', {
    subformat: 'monolithicSparse',
    capacity: 8 * MiB,
    unitSize: 4096,
    content: sparseHead,
    at: 2 * MiB,
  });
  const ro = plainRaw(tmp.dir, 'ro', plainContent);
  ({ host, socket } = await startHost(tmp.dir, [
    { path: flat, shared: 4 },
    { path: sparse, shared: 4 },
    { path: ro, name: 'ro', readOnly: true },
  ]));
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(async () => {
  await host?.close();
  tmp?.cleanup();
});

describe('negotiation', () => {
  it('greets with fixed newstyle and no-zeroes, and lists the exports', async () => {
    const c = await client();
    expect(await c.handshake()).toBe(3);
    c.sendOption(OPT.LIST);
    const rs = await c.optionReplies();
    expect(rs.filter((r) => r.type === REP_SERVER).map((r) => r.data.subarray(4, 4 + r.data.readUInt32BE(0)).toString())).toEqual(['flat', 'sparse', 'ro']);
    expect(rs[rs.length - 1].type).toBe(REP_ACK);
  });

  it('answers INFO with size, flags, name, description and block sizes (minimum = data unit)', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(OPT.INFO, RawClient.nameData('sparse', [1, 2, 3]));
    const rs = await c.optionReplies();
    const infos = new Map(rs.filter((r) => r.type === REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data.subarray(2)]));
    expect(Number(infos.get(0)!.readBigUInt64BE(0))).toBe(8 * MiB);
    expect(infos.get(1)!.toString()).toBe('sparse');
    expect(infos.get(2)!.toString()).toMatch(/encrypted monolithicSparse/);
    const bs = infos.get(3)!;
    expect([bs.readUInt32BE(0), bs.readUInt32BE(4), bs.readUInt32BE(8)]).toEqual([4096, 4096, 32 * MiB]);
    // INFO does not end negotiation: another option is still answered.
    c.sendOption(OPT.ABORT);
    expect((await c.optionReply()).type).toBe(REP_ACK);
  });

  it('answers unknown options with ERR_UNSUP and keeps negotiating', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(0x4242, Buffer.from('whatever'));
    expect((await c.optionReply()).type).toBe(REP_ERR_UNSUP);
    c.sendOption(OPT.STARTTLS);
    expect((await c.optionReply()).type).toBe(REP_ERR_UNSUP);
    c.sendOption(OPT.GO, RawClient.nameData('nope'));
    const unknown = await c.optionReply();
    expect(unknown.type).toBe(REP_ERR_UNKNOWN);
    expect(unknown.data.toString()).toContain("no export named 'nope'");
    c.sendOption(OPT.LIST, Buffer.from('x'));
    expect((await c.optionReply()).type).toBe(REP_ERR_INVALID);
    c.sendOption(OPT.GO, Buffer.from([0, 0, 0, 9, 1])); // name length beyond the data
    expect((await c.optionReply()).type).toBe(REP_ERR_INVALID);
    c.sendOption(OPT.SET_META_CONTEXT, RawClient.metaData('flat', ['base:allocation']));
    expect((await c.optionReply()).type).toBe(REP_ERR_INVALID); // structured replies first
    c.sendOption(OPT.INFO, Buffer.alloc(0), 1 << 20); // declared 1 MiB of data: refused, then discarded
    c.write(Buffer.alloc(1 << 20));
    expect((await c.optionReply()).type).toBe(REP_ERR_TOO_BIG);
    await c.go('flat', { greeted: true });
  });

  it('lists and sets base:allocation', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(OPT.LIST_META_CONTEXT, RawClient.metaData('sparse', []));
    const listed = await c.optionReplies();
    expect(listed.filter((r) => r.type === REP_META_CONTEXT).map((r) => r.data.subarray(4).toString())).toEqual(['base:allocation']);
    c.sendOption(OPT.STRUCTURED_REPLY);
    expect((await c.optionReply()).type).toBe(REP_ACK);
    c.sendOption(OPT.SET_META_CONTEXT, RawClient.metaData('sparse', ['qemu:dirty-bitmap:x', 'base:allocation']));
    const set = await c.optionReplies();
    expect(set.map((r) => r.type)).toEqual([REP_META_CONTEXT, REP_ACK]);
  });

  it('serves EXPORT_NAME (old clients) and closes on an unknown name', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(OPT.EXPORT_NAME, Buffer.from('ro'));
    const r = await c.read(10); // NO_ZEROES negotiated: no padding
    expect(Number(r.readBigUInt64BE(0))).toBe(MiB);
    expect(r.readUInt16BE(8) & 2).toBe(2); // read-only
    const rd = await c.request(CMD.READ, 100, 1000);
    expect(rd.error).toBe(0);
    expect(rd.data.equals(plainContent.subarray(100, 1100))).toBe(true);

    const bad = await client();
    await bad.handshake();
    bad.sendOption(OPT.EXPORT_NAME, Buffer.from('nope'));
    expect(await bad.closedByServer()).toBe(true);
  });

  it('closes on unknown client flags and on a wrong option magic', async () => {
    const a = await client();
    await a.handshake(0x80);
    expect(await a.closedByServer()).toBe(true);
    const b = await client();
    await b.handshake();
    b.write(Buffer.alloc(16, 0x41));
    expect(await b.closedByServer()).toBe(true);
  });
});

describe('transmission', () => {
  it('reads, writes (unaligned too: read-modify-write), flushes, with simple replies', async () => {
    const c = await client();
    const { size, flags } = await c.go('flat');
    expect(size).toBe(4 * MiB);
    expect(flags & 0x100).toBe(0x100); // CAN_MULTI_CONN with shared 4
    const rd = await c.request(CMD.READ, MiB, 8192);
    expect(rd.data.equals(flatContent.subarray(MiB, MiB + 8192))).toBe(true);
    const data = random(1000);
    expect((await c.request(CMD.WRITE, 777, 1000, FLAG.FUA, data)).error).toBe(0);
    expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
    const back = await c.request(CMD.READ, 0, 4096);
    const expected = Buffer.from(flatContent.subarray(0, 4096));
    data.copy(expected, 777);
    expect(back.data.equals(expected)).toBe(true);
    data.copy(flatContent, 777);
  });

  it('answers bad requests with errors and keeps the connection', async () => {
    const c = await client();
    await c.go('flat', { structured: true });
    expect((await c.request(CMD.READ, 4 * MiB - 512, 1024)).error).toBe(EINVAL);
    expect((await c.request(CMD.WRITE, 4 * MiB - 512, 1024, 0, random(1024))).error).toBe(ENOSPC);
    expect((await c.request(CMD.READ, 0, 33 * MiB)).error).toBe(EOVERFLOW);
    expect((await c.request(CMD.WRITE, 0, 33 * MiB, 0, Buffer.alloc(33 * MiB))).error).toBe(EOVERFLOW);
    expect((await c.request(99, 0, 0)).error).toBe(EINVAL);
    expect((await c.request(CMD.CACHE, 0, 512)).error).toBe(EINVAL);
    expect((await c.request(CMD.BLOCK_STATUS, 0, 512)).error).toBe(EINVAL); // no meta context
    const huge = await c.request(CMD.READ, Number.MAX_SAFE_INTEGER, 512);
    expect(huge.error).toBe(EINVAL);
    expect(huge.message).toMatch(/past the end/);
    const ok = await c.request(CMD.READ, 0, 512);
    expect(ok.error).toBe(0);
    expect(ok.data.equals(flatContent.subarray(0, 512))).toBe(true);
  });

  it('refuses FAST_ZERO where zeroing means writing (flat, encrypted) and zeroes otherwise', async () => {
    const c = await client();
    await c.go('flat', { structured: true });
    expect((await c.request(CMD.WRITE_ZEROES, 0, 65536, FLAG.FAST_ZERO)).error).toBe(ENOTSUP);
    expect((await c.request(CMD.READ, 0, 512)).data.equals(flatContent.subarray(0, 512))).toBe(true); // untouched
    expect((await c.request(CMD.WRITE_ZEROES, 1000, 70000, FLAG.NO_HOLE)).error).toBe(0);
    const z = await c.request(CMD.READ, 0, 72000);
    const expected = Buffer.from(flatContent.subarray(0, 72000));
    expected.fill(0, 1000, 71000);
    expect(z.data.equals(expected)).toBe(true);
    flatContent.fill(0, 1000, 71000);
    // TRIM keeps the data readable (never a ciphertext hole that decrypts to noise).
    expect((await c.request(CMD.TRIM, 0, 4 * MiB)).error).toBe(0);
    expect((await c.request(CMD.READ, MiB, 4096)).data.equals(flatContent.subarray(MiB, MiB + 4096))).toBe(true);
  });

  it('reports holes of a sparse disk, zeroes without allocating, and FAST_ZERO of a hole succeeds', async () => {
    const c = await client();
    await c.go('sparse', { structured: true, meta: true, blockSize: true });
    const bs = await c.request(CMD.BLOCK_STATUS, 0, 8 * MiB);
    expect(bs.error).toBe(0);
    const total = bs.extents.reduce((s, [l]) => s + l, 0);
    expect(total).toBe(8 * MiB);
    const dataAt: Array<[number, number, number]> = [];
    let at = 0;
    for (const [l, f] of bs.extents) {
      dataAt.push([at, l, f]);
      at += l;
    }
    expect(dataAt.some(([o, l, f]) => f === 0 && o <= 2 * MiB && o + l >= 2 * MiB + 65536)).toBe(true);
    expect(dataAt.some(([o, , f]) => f === 3 && o >= 2 * MiB + 65536)).toBe(true);
    // A hole zeroes instantly, even with FAST_ZERO, and stays a hole.
    expect((await c.request(CMD.WRITE_ZEROES, 6 * MiB, MiB, FLAG.FAST_ZERO)).error).toBe(0);
    const after = await c.request(CMD.BLOCK_STATUS, 6 * MiB, MiB, FLAG.REQ_ONE);
    expect(after.extents).toEqual([[MiB, 3]]);
    // Zeroing data reads back zeros.
    expect((await c.request(CMD.WRITE_ZEROES, 2 * MiB, 8192)).error).toBe(0);
    expect((await c.request(CMD.READ, 2 * MiB, 8192)).data.equals(Buffer.alloc(8192))).toBe(true);
    // A structured read of data and holes: the holes come as OFFSET_HOLE chunks, the whole reads right.
    const mixed = await c.request(CMD.READ, 2 * MiB - 65536, 4 * 65536);
    expect(mixed.error).toBe(0);
    expect(mixed.holes.length).toBeGreaterThan(0);
    expect(mixed.data.equals(Buffer.concat([Buffer.alloc(65536), Buffer.alloc(8192), sparseHead.subarray(8192, 65536), Buffer.alloc(2 * 65536)]))).toBe(true);
    // The client asked for block sizes: it must obey the 4096-byte minimum.
    expect((await c.request(CMD.READ, 512, 4096)).error).toBe(EINVAL);
  });

  it('serves unaligned requests to a client that did not ask for block sizes', async () => {
    const c = await client();
    await c.go('sparse');
    const data = random(3000);
    expect((await c.request(CMD.WRITE, 5 * MiB + 123, 3000, 0, data)).error).toBe(0);
    expect((await c.request(CMD.READ, 5 * MiB + 123, 3000)).data.equals(data)).toBe(true);
    expect((await c.request(CMD.READ, 5 * MiB, 123)).data.equals(Buffer.alloc(123))).toBe(true);
  });

  it('refuses writes to a read-only export with EPERM', async () => {
    const c = await client();
    const { flags } = await c.go('ro');
    expect(flags & 2).toBe(2);
    expect((await c.request(CMD.WRITE, 0, 512, 0, random(512))).error).toBe(EPERM);
    expect((await c.request(CMD.WRITE_ZEROES, 0, 512)).error).toBe(EPERM);
    expect((await c.request(CMD.TRIM, 0, 512)).error).toBe(EPERM);
    expect((await c.request(CMD.FLUSH, 0, 0)).error).toBe(0);
    expect((await c.request(CMD.READ, 0, 512)).data.equals(plainContent.subarray(0, 512))).toBe(true);
  });

  it('answers requests sent back to back, each with its cookie', async () => {
    const c = await client();
    await c.go('flat', { structured: true });
    const cookies = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => c.send(CMD.READ, i * 65536, 65536));
    const replies = [];
    for (let i = 0; i < cookies.length; i++) replies.push(await c.reply());
    expect(replies.map((r) => r.cookie).sort()).toEqual([...cookies].sort());
    for (const r of replies) {
      const i = cookies.indexOf(r.cookie);
      expect(r.data.equals(flatContent.subarray(i * 65536, (i + 1) * 65536))).toBe(true);
    }
  });
});

describe('bad clients', () => {
  it('a wrong request magic, a truncated request or payload closes only that connection', async () => {
    const good = await client();
    await good.go('flat', { structured: true });
    const wrong = await client();
    await wrong.go('flat');
    wrong.send(CMD.READ, 0, 512, 0, undefined, 0xdeadbeef);
    expect(await wrong.closedByServer()).toBe(true);
    const truncated = await client();
    await truncated.go('flat');
    truncated.write(Buffer.alloc(10));
    truncated.socket.end();
    const shortWrite = await client();
    await shortWrite.go('flat');
    shortWrite.send(CMD.WRITE, 0, 4096, 0, Buffer.alloc(100));
    shortWrite.socket.end();
    const garbage = await client();
    garbage.write(random(4096));
    expect(await garbage.closedByServer()).toBe(true);
    const r = await good.request(CMD.READ, MiB, 512);
    expect(r.error).toBe(0);
    expect(r.data.equals(flatContent.subarray(MiB, MiB + 512))).toBe(true);
    // The truncated write never reached the disk.
    expect((await good.request(CMD.READ, 0, 512)).data.equals(flatContent.subarray(0, 512))).toBe(true);
  });

  it('refuses a connection beyond --shared with ERR_POLICY', async () => {
    const { host: h2, socket: s2 } = await startHost(tempDirFor(), [{ path: (await extraDisk()).path, name: 'one' }]);
    try {
      const a = await RawClient.connect(s2);
      clients.push(a);
      await a.go('one');
      const b = await RawClient.connect(s2);
      clients.push(b);
      await b.handshake();
      b.sendOption(OPT.GO, RawClient.nameData('one'));
      const r = await b.optionReplies();
      expect(r[r.length - 1].type).toBe(REP_ERR_POLICY);
      expect(r[r.length - 1].data.toString()).toMatch(/already has 1 client/);
      expect(h2.exports()[0]).toMatchObject({ name: 'one', clients: 1, shared: 1 });
      // The writable export with one connection allowed does not advertise multi-conn.
      const c = await RawClient.connect(s2);
      clients.push(c);
      await c.handshake();
      c.sendOption(OPT.INFO, RawClient.nameData('one'));
      const info = (await c.optionReplies()).find((x) => x.type === REP_INFO)!;
      expect(info.data.readUInt16BE(10) & 0x100).toBe(0);
    } finally {
      await h2.close();
    }
  });

  it('--no-list refuses LIST and names no other export', async () => {
    const { host: h2, socket: s2 } = await startHost(tempDirFor(), [{ path: (await extraDisk()).path, name: 'one' }], { noList: true });
    try {
      const c = await RawClient.connect(s2);
      clients.push(c);
      await c.handshake();
      c.sendOption(OPT.LIST);
      expect((await c.optionReply()).type).toBe(REP_ERR_POLICY);
      c.sendOption(OPT.GO, RawClient.nameData('other'));
      const r = await c.optionReply();
      expect(r.type).toBe(REP_ERR_UNKNOWN);
      expect(r.data.toString()).not.toContain('one');
    } finally {
      await h2.close();
    }
  });
});

let extraCount = 0;
function tempDirFor(): string {
  const d = `${tmp.dir}/h${++extraCount}`;
  mkdirSync(d);
  return d;
}
async function extraDisk(): Promise<{ path: string }> {
  return { path: plainRaw(`${tmp.dir}/h${extraCount}`, 'one', Buffer.alloc(MiB)) };
}

describe('stream handling', () => {
  it('negotiates and serves when every byte arrives in its own packet', async () => {
    const c = await client();
    c.socket.setNoDelay(true);
    const greeting = await c.read(18);
    expect(greeting.subarray(0, 8).toString()).toBe('NBDMAGIC');
    const opt = Buffer.alloc(16);
    opt.write('IHAVEOPT', 0, 'ascii');
    opt.writeUInt32BE(OPT.GO, 8);
    const data = RawClient.nameData('flat');
    opt.writeUInt32BE(data.length, 12);
    const req = Buffer.alloc(28);
    req.writeUInt32BE(0x25609513, 0);
    req.writeUInt16BE(CMD.READ, 6);
    req.writeBigUInt64BE(77n, 8);
    req.writeBigUInt64BE(BigInt(MiB), 16);
    req.writeUInt32BE(512, 24);
    const bytes = Buffer.concat([Buffer.from([0, 0, 0, 3]), opt, data, req]);
    for (const b of bytes) {
      c.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    const replies = await c.optionReplies();
    expect(replies[replies.length - 1].type).toBe(REP_ACK);
    const r = await c.reply(512);
    expect(r.cookie).toBe(77n);
    expect(r.data.equals(flatContent.subarray(MiB, MiB + 512))).toBe(true);
  });

  it('keeps serving with 500 idle connections open', async () => {
    const idle = await Promise.all(Array.from({ length: 500 }, () => client()));
    expect(idle).toHaveLength(500);
    const c = await client();
    await c.go('ro');
    expect((await c.request(CMD.READ, 0, 4096)).data.equals(plainContent.subarray(0, 4096))).toBe(true);
  });
});

describe('bounded memory', () => {
  it('a client that never reads its replies stalls only itself, and close() does not wait for it', async () => {
    const dir = tempDirFor();
    const disk = plainRaw(dir, 'm', random(4 * MiB));
    const { host: h2, socket: s2 } = await startHost(dir, [{ path: disk, name: 'm', shared: 4 }]);
    let closed = false;
    try {
      const bad = await RawClient.connect(s2);
      clients.push(bad);
      await bad.go('m');
      bad.socket.pause(); // never reads again
      for (let i = 0; i < 300; i++) bad.send(CMD.READ, 0, MiB);
      const good = await RawClient.connect(s2);
      clients.push(good);
      await good.go('m', { structured: true });
      for (let i = 0; i < 20; i++) {
        const r = await good.request(CMD.READ, i * 65536, 2 * MiB);
        expect(r.error).toBe(0);
        expect(r.data.length).toBe(2 * MiB);
      }
      await h2.close();
      closed = true;
    } finally {
      if (!closed) await h2.close();
    }
  });

  it('a write cut short does not keep its share of the budget', async () => {
    const dir = tempDirFor();
    const disk = plainRaw(dir, 'c', Buffer.alloc(MiB));
    const { host: h2, socket: s2 } = await startHost(dir, [{ path: disk, name: 'c', shared: 8 }], { payloadBudget: 65536 });
    try {
      for (let i = 0; i < 3; i++) {
        const cut = await RawClient.connect(s2);
        clients.push(cut);
        await cut.go('c');
        cut.send(CMD.WRITE, 0, 65536, 0, Buffer.alloc(1000));
        cut.socket.end();
        await cut.closedByServer();
      }
      const c = await RawClient.connect(s2);
      clients.push(c);
      await c.go('c');
      const data = random(65536);
      expect((await c.request(CMD.WRITE, 0, 65536, 0, data)).error).toBe(0);
      expect((await c.request(CMD.READ, 0, 65536)).data.equals(data)).toBe(true);
    } finally {
      await h2.close();
    }
  });

  it('close() returns while one client pins the budget and another waits for it', async () => {
    const dir = tempDirFor();
    const disk = plainRaw(dir, 'p', random(4 * MiB));
    const { host: h2, socket: s2 } = await startHost(dir, [{ path: disk, name: 'p', shared: 4 }], { payloadBudget: MiB });
    let closed = false;
    try {
      const pinning = await RawClient.connect(s2);
      clients.push(pinning);
      await pinning.go('p');
      pinning.socket.pause();
      for (let i = 0; i < 8; i++) pinning.send(CMD.READ, 0, MiB);
      const waiting = await RawClient.connect(s2);
      clients.push(waiting);
      await waiting.go('p');
      waiting.send(CMD.WRITE, 0, MiB, 0, random(MiB));
      await h2.close();
      closed = true;
      expect(h2.exports()[0].clients).toBe(0);
    } finally {
      if (!closed) await h2.close();
    }
  });

  it('serves requests larger than a tiny payload budget, one at a time', async () => {
    const dir = tempDirFor();
    const content = random(8 * MiB);
    const disk = plainRaw(dir, 't', content);
    const { host: h2, socket: s2 } = await startHost(dir, [{ path: disk, name: 't', shared: 4 }], { payloadBudget: 64 * 1024 });
    try {
      const c = await RawClient.connect(s2);
      clients.push(c);
      await c.go('t', { structured: true });
      const cookies = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => c.send(CMD.READ, i * MiB, MiB));
      // Rewrites what is there: the concurrent read of that range sees the same bytes either way.
      const w = c.send(CMD.WRITE, 7 * MiB, MiB, 0, content.subarray(7 * MiB, 8 * MiB));
      const replies = [];
      for (let i = 0; i < 9; i++) replies.push(await c.reply());
      for (const r of replies) {
        expect(r.error).toBe(0);
        if (r.cookie === w) continue;
        const i = cookies.indexOf(r.cookie);
        expect(r.data.equals(content.subarray(i * MiB, (i + 1) * MiB))).toBe(true);
      }
    } finally {
      await h2.close();
    }
  });
});
