// SIGKILL of `vmseal serve` at every call of a live snapshot (`vmseal host snapshot`) of a plain
// disk (chain-snapshot-crash.test.ts: the other kind; a file each, each under a minute): a
// restarted `vmseal serve` serves the base with every flushed write, or the finished child's chain —
// never a state that needs a manual step (test/serve/chain-crash.ts, checkSnapshotKills).
import { describe, expect, it } from 'vitest';
import { checkSnapshotKills, setUpChainCrash } from './chain-crash.js';

setUpChainCrash();

describe('SIGKILL of `vmseal serve` during a live snapshot', () => {
  it.each(['plain'] as const)(
    '%s: the base or the finished child is served again with every write, with no manual step',
    async (flavor) => {
      const outcomes = await checkSnapshotKills(flavor);
      // Every kind of outcome is met: before the base is made read-only; after it, the child not in
      // place yet (undone on the restart); the child in place.
      for (const kind of [/base served; no child/, /base served after undo; no child/, /child served/]) {
        expect(
          outcomes.some((o) => kind.test(o)),
          `${String(kind)}:\n${outcomes.join('\n')}`,
        ).toBe(true);
      }
    },
    120_000,
  );
});
