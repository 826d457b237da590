// SIGKILL of `vmseal serve` at each step of a live commit of an encrypted chain, reads going on:
// the chain is left as it was, or refused until `vmseal resume` finishes the commit, which keeps
// every write (test/serve/chain-crash.ts has the steps and the checks).
import { describe, it } from 'vitest';
import { checkCommitKills, setUpChainCrash } from './chain-crash.js';

setUpChainCrash();

describe('SIGKILL of `vmseal serve` during a live commit of an encrypted chain, reads going on', () => {
  it('leaves the old chain, or one refused until vmseal resume finishes it; then the disk holds every write', async () => {
    await checkCommitKills('encrypted');
  }, 120_000);
});
