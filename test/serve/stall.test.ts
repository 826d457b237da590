// Clients that never read their replies, several at once, on a child server (its peak RSS, VmHWM,
// is the server's alone): together they would spend the whole payload budget and stall every
// other client; the send-stall timeout (--stall-timeout, small here) disconnects them instead.
// Outcomes only, no timings: the normal client's requests complete with the right data, memory
// stays bounded, and each stalled connection is closed with a log line saying why.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tempDir } from '../disk/helpers.js';
import { startServeChild, type ServeChild } from './serve-child.js';
import { encryptedDisk, random } from './helpers.js';
import { CMD, RawClient } from './nbd-client.js';

const MiB = 1 << 20;
const MAX = 32 * MiB; // the largest request the server takes
const RSS_LIMIT_MIB = 256;
const STALLED = 6;

let tmp: ReturnType<typeof tempDir>;
let server: ServeChild;
let socket: string;
const clients: RawClient[] = [];

/** Connections the server closed for not reading their replies, by its log. */
function stallClosures(): number {
  return server.stderr().match(/^vmseal: connection \d+ \(.*\) closed: replies unread for 1000 ms while other requests wait/gm)?.length ?? 0;
}

async function client(): Promise<RawClient> {
  const c = await RawClient.connect(socket);
  clients.push(c);
  await c.go('s');
  return c;
}

beforeAll(async () => {
  tmp = tempDir('vmseal-serve-stall-');
  const disk = await encryptedDisk(tmp.dir, 's', { subformat: 'monolithicFlat', capacity: 2 * MAX, unitSize: 512 });
  server = await startServeChild(tmp.dir, disk, 's', ['--stall-timeout', '1000']);
  socket = server.socket;
}, 60_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await server?.stop();
  tmp?.cleanup();
}, 60_000);

describe('clients that never read their replies', () => {
  it(`${STALLED} of them do not stall a normal client, are disconnected, and memory stays bounded`, async () => {
    // Each asks for 32 replies of 1 MiB and never reads one: together 192 MiB of replies, three
    // times the 64 MiB budget; each stops being read from after its own 16 MiB share.
    const stalled = await Promise.all(Array.from({ length: STALLED }, () => client()));
    for (const c of stalled) {
      c.socket.pause();
      for (let i = 0; i < 32; i++) c.send(CMD.READ, i * MiB, MiB);
    }

    // A normal client writes and reads back, with the budget spent by the stalled ones.
    const good = await client();
    const data = random(4 * MiB);
    expect((await good.request(CMD.WRITE, MAX + MiB, data.length, 0, data)).error).toBe(0);
    const r = await good.request(CMD.READ, MAX + MiB, data.length);
    expect(r.error).toBe(0);
    expect(r.data.equals(data)).toBe(true);
    expect(stallClosures()).toBeGreaterThan(0);

    // Stalled connections are cut off while others wait for the budget: keep it in demand (six
    // clients with 16 reads of 1 MiB in flight each ask for 96 MiB) until every stalled one is gone.
    // These clients read their replies, so they are never cut off themselves.
    const busy = await Promise.all(Array.from({ length: 6 }, () => client()));
    while (stallClosures() < STALLED) {
      await Promise.all(
        busy.map(async (b) => {
          for (let i = 0; i < 16; i++) b.send(CMD.READ, i * MiB, MiB);
          for (let i = 0; i < 16; i++) expect((await b.reply(MiB)).error).toBe(0);
        }),
      );
    }
    expect(stallClosures()).toBe(STALLED);

    // The normal client is still served, and the server never went past its memory target.
    const again = await good.request(CMD.READ, MAX + MiB, data.length);
    expect(again.data.equals(data)).toBe(true);
    expect(server.peakRssMiB()).toBeLessThan(RSS_LIMIT_MIB);
  }, 50_000);
});
