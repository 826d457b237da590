/**
 * One progress bar for a whole batch. Images converted at once would each draw a bar on the same
 * terminal line and overwrite each other; instead every image's job reports into this one bar,
 * which shows the bytes of the images started so far (finished ones count what they converted).
 */
import type { Ctx } from './context.js';
import type { JobHooks, JobProgressEvent } from './jobs.js';

export interface BatchProgress {
  /** Hooks for one image's job: its progress feeds the batch bar; `done` leaves its bytes counted. */
  hooks(): JobHooks;
  /** Remove the bar (when the batch is over). */
  stop(): void;
}

export function batchProgress(ctx: Ctx, label = 'batch'): BatchProgress {
  const bar = ctx.output.progress(label);
  // Per running image: the bytes done and the total it last reported.
  const running = new Set<{ done: number; total: number }>();
  let finishedBytes = 0;
  const redraw = (): void => {
    let done = finishedBytes;
    let total = finishedBytes;
    for (const r of running) {
      done += r.done;
      total += r.total;
    }
    bar.update({ bytesDone: done, bytesTotal: total });
  };
  return {
    hooks(): JobHooks {
      const image = { done: 0, total: 0 };
      running.add(image);
      return {
        signal: ctx.signal,
        onProgress: (p: JobProgressEvent) => {
          image.done = p.bytesDone;
          image.total = p.bytesTotal;
          redraw();
        },
        done: () => {
          if (!running.delete(image)) return;
          // A failed image counts what it did, so the bar does not claim work that was not done.
          finishedBytes += image.done;
        },
      };
    },
    stop: () => bar.stop(),
  };
}
