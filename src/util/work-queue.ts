/**
 * A queue that async workers drain while its producer still fills it.
 *
 * Why: a job whose work is found as it goes (a rollback learns which chunks differ as their hashes
 * arrive) should start on the first item rather than wait for the whole list. The producer push()es
 * items and calls end() once — also when it fails, so that no worker waits for an item that will
 * never come. Items are small (offsets, hashes); what bounds memory is the number of workers.
 */
export class WorkQueue<T> {
  private readonly items: T[] = [];
  private head = 0;
  private readonly waiting: Array<(item: T | undefined) => void> = [];
  private ended = false;

  /** Add an item: a waiting worker gets it at once. Ignored after end(). */
  push(item: T): void {
    if (this.ended) return;
    const worker = this.waiting.shift();
    if (worker) worker(item);
    else this.items.push(item);
  }

  /** No more items: every waiting worker, and every later take() once the queue is empty, gets undefined. */
  end(): void {
    this.ended = true;
    for (const worker of this.waiting.splice(0)) worker(undefined);
  }

  /** The next item, in the order pushed; undefined once the queue has ended and is empty. */
  take(): Promise<T | undefined> {
    if (this.head < this.items.length) {
      const item = this.items[this.head++]!;
      if (this.head === this.items.length) {
        // Drained: start again at 0 rather than keep a growing array of taken slots.
        this.items.length = 0;
        this.head = 0;
      }
      return Promise.resolve(item);
    }
    if (this.ended) return Promise.resolve(undefined);
    return new Promise((resolve) => this.waiting.push(resolve));
  }
}
