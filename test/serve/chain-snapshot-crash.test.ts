// SIGKILL of `vmseal serve` at every call of a live snapshot (`vmseal host snapshot`), encrypted
// and plain: the base keeps every flushed write and a child left behind is whole or refused
// (test/serve/chain-crash.ts, checkSnapshotKills).
import { describe, expect, it } from 'vitest';
import { checkSnapshotKills, setUpChainCrash } from './chain-crash.js';

setUpChainCrash();

describe('SIGKILL of `vmseal serve` during a live snapshot', () => {
  it.each(['encrypted', 'plain'] as const)(
    '%s: the base is served again with every write; a child left is whole or refused',
    async (flavor) => {
      const outcomes = await checkSnapshotKills(flavor);
      // Every kind of outcome is met: before the base is made read-only, while the child is written, after.
      expect(
        outcomes.some((o) => /base served; child no child/.test(o)),
        outcomes.join('\n'),
      ).toBe(true);
      expect(
        outcomes.some((o) => /base refused; child ERR_VMDK_/.test(o)),
        outcomes.join('\n'),
      ).toBe(true);
      expect(
        outcomes.some((o) => /base refused; child opens/.test(o)),
        outcomes.join('\n'),
      ).toBe(true);
    },
    120_000,
  );
});
