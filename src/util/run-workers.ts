/**
 * A fixed number of async workers over shared work, stopped together.
 *
 * Jobs that run several workers over one queue (a backup's chunks, a restore's, a rollback's) need
 * the same rule: the first failure stops every worker (none goes on reading or writing after it),
 * and the call returns only once every worker has stopped — so that no worker still touches a disk,
 * a file or a lock that the caller releases next — and then rethrows that first failure.
 */

/**
 * Run `count` copies of `work` at once. Each gets `stopped()`, true once any copy failed: it checks
 * it before each step and returns. Resolves when every copy has returned; rejects, once all have
 * settled, with the first failure (in time; later ones are usually its consequences).
 */
export async function runWorkers(count: number, work: (stopped: () => boolean) => Promise<void>): Promise<void> {
  let failure: { reason: unknown } | undefined;
  const stopped = (): boolean => failure !== undefined;
  const guarded = async (): Promise<void> => {
    try {
      await work(stopped);
    } catch (err) {
      failure ??= { reason: err };
    }
  };
  await Promise.all(Array.from({ length: count }, guarded));
  if (failure) throw failure.reason;
}
