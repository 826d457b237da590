// The admission gate of an export (src/serve/op-gate.ts): closing it to writes waits for the writes
// in flight and holds new ones while reads go on; closing it to reads waits for those too; opening
// it runs what was held, in arrival order, and nothing fails because of it.
import { describe, expect, it } from 'vitest';
import { OpGate } from '../../src/serve/op-gate.js';

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('OpGate', () => {
  it('holds writes back while closed to writes, lets reads run, and runs the held writes in order once open', async () => {
    const gate = new OpGate();
    const order: string[] = [];
    const slow = deferred();
    const inFlight = gate.run('write', async () => {
      await slow.promise;
      order.push('w0');
    });
    let closed = false;
    const closing = gate.close('write').then(() => (closed = true));
    await tick();
    expect(closed).toBe(false); // w0 is still in flight
    const held = [1, 2, 3].map((i) => gate.run('write', async () => void order.push(`w${i}`)));
    slow.resolve();
    await inFlight;
    await closing;
    expect(closed).toBe(true);
    // Reads are admitted while writes are held.
    expect(await gate.run('read', async () => 'r')).toBe('r');
    await tick();
    expect(order).toEqual(['w0']);
    expect(gate.active('write')).toBe(0);
    gate.open();
    await Promise.all(held);
    expect(order).toEqual(['w0', 'w1', 'w2', 'w3']);
  });

  it('closing to reads waits for the reads in flight and holds new ones; a failing request still leaves the gate', async () => {
    const gate = new OpGate();
    const slow = deferred();
    const read = gate.run('read', () => slow.promise);
    await expect(gate.run('read', () => Promise.reject(new Error('disk error')))).rejects.toThrow('disk error');
    let drained = false;
    const closing = gate.close('read').then(() => (drained = true));
    await tick();
    expect(drained).toBe(false);
    let ran = false;
    const later = gate.run('read', async () => void (ran = true));
    slow.resolve();
    await read;
    await closing;
    await tick();
    expect(ran).toBe(false);
    gate.open();
    await later;
    expect(ran).toBe(true);
    expect(gate.active('read')).toBe(0);
  });
});
