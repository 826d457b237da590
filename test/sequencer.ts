// The order test files start in: the slowest known ones first, then vitest's own order (its cache of
// last durations if it has one, else the larger files first). With two forks, a slow file that
// starts last keeps one fork busy alone at the end of the run; started first, it overlaps the many
// short files instead. The list is a hint from a full run's per-file times (the files above ~10 s):
// a file missing from it, or a stale entry, only changes the order, never what runs.
import { BaseSequencer, type TestSpecification } from 'vitest/node';

export const SLOW_FIRST = [
  'test/pipeline/crash-fs.test.ts',
  'test/cli/cli.e2e.test.ts',
  'test/serve/vm-boot.test.ts',
  'test/vmdk/sparse-crash.test.ts',
  'test/pipeline/sigkill.test.ts',
  'test/vm/uefi-boot.test.ts',
  'test/vm/folder-crash.test.ts',
  'test/kmip/provider.test.ts',
  'test/cli/keyrot.test.ts',
  'test/backup/restore-rewrap.test.ts',
  'test/pipeline/single-file-commit.test.ts',
  'test/serve/sparse-crash.test.ts',
  'test/pipeline/chain-commit-crash.test.ts',
  'test/kmip/cluster.test.ts',
  'test/serve/outage.test.ts',
  'test/serve/memory.test.ts',
];

export default class SlowFirstSequencer extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification): number => {
      const i = SLOW_FIRST.findIndex((p) => f.moduleId.endsWith(`/${p}`));
      return i < 0 ? SLOW_FIRST.length : i;
    };
    // Array.prototype.sort is stable: the files not listed keep vitest's order.
    return sorted.sort((a, b) => rank(a) - rank(b));
  }
}
