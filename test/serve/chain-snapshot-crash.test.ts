// SIGKILL of `vmseal serve` at every call of a live snapshot (`vmseal host snapshot`) of an encrypted
// disk (chain-snapshot-crash-plain.test.ts: the other kind; a file each, each under a minute): a
// restarted `vmseal serve` serves the base with every flushed write, or the finished child's chain —
// never a state that needs a manual step (test/serve/chain-crash.ts, checkSnapshotKills).
import { describe } from 'vitest';
import { setUpChainCrash, snapshotKillTest } from './chain-crash.js';

setUpChainCrash();

describe('SIGKILL of `vmseal serve` during a live snapshot', () => snapshotKillTest('encrypted'));
