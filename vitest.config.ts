import { availableParallelism } from 'node:os';
import { defineConfig } from 'vitest/config';
import SlowFirstSequencer from './test/sequencer.js';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    // Forks, not worker threads: tests start servers, spawn children and load the native addon.
    pool: 'forks',
    // At least two forks. vitest's default (cores - 1) is one fork on the 2-core CI machines, which
    // then run the files one after the other while most of a file's time is spent waiting: for
    // qemu, PyKMIP, CLI children, fsync, a server's reply. The second fork fills those waits.
    // Every file makes its own temp folders, ports (0: the kernel picks) and children, so two
    // files at once do not meet. Larger machines keep the default.
    maxWorkers: Math.max(2, availableParallelism() - 1),
    // The slowest files start first (test/sequencer.ts), so that none of them is left running alone at the end.
    sequence: { sequencer: SlowFirstSequencer },
    testTimeout: 120_000,
    hookTimeout: 120_000,
    teardownTimeout: 30_000,
  },
});
