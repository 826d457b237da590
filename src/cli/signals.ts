/**
 * Ctrl-C and SIGTERM become an AbortSignal that every job watches: the job stops, removes its
 * temporary output (or leaves a resumable journal for --in-place jobs) and the CLI exits 130.
 * A second Ctrl-C while cleaning up exits at once (the temporary name is then the only leftover,
 * and it never carries the final name).
 */
export interface Interruption {
  readonly signal: AbortSignal;
  /** Which signal arrived, if any. */
  readonly received: () => NodeJS.Signals | undefined;
  dispose(): void;
}

export function abortOnSignals(onSecond: () => void = () => process.exit(130)): Interruption {
  const controller = new AbortController();
  let received: NodeJS.Signals | undefined;
  const handler = (sig: NodeJS.Signals): void => {
    if (received !== undefined) {
      onSecond();
      return;
    }
    received = sig;
    const err = new Error(`interrupted by ${sig}`);
    err.name = 'AbortError';
    controller.abort(err);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    signal: controller.signal,
    received: () => received,
    dispose() {
      process.removeListener('SIGINT', handler);
      process.removeListener('SIGTERM', handler);
    },
  };
}
