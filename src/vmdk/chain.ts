import type { Descriptor } from './descriptor.js';
import { type AllocatedRange, type VirtualDisk, VmdkDisk } from './disk.js';
import { VmdkFormatError } from './errors.js';
import { Mutex } from './file.js';

/** What a chain holds besides its layers: the locks taken on the parents, released at close. */
export interface ChainResources {
  release(): void;
  /** Release the lock on the top's own parent only, now (see ChainDisk.releaseParentLock). */
  releaseParent?(): void;
}

/**
 * A snapshot chain seen as one disk: `top` (a sparse child, the only layer written) over `parent`
 * (a VirtualDisk, itself a ChainDisk when the chain is deeper). A byte of the disk is the top's
 * when the top's grain holding it is allocated or zeroed, else the parent's; the parent is opened
 * read-only. Everything about the descriptor (CID, encryption lines, updateDescriptor) is the top's.
 *
 * Writes are copy-on-write by grain: a write that covers an unallocated grain of the top only in
 * part first reads the rest of that grain through the chain (the parent's data), so the new grain
 * holds the parent's bytes around the written ones — a hosted sparse extent fills an unallocated
 * grain's rest with zeros, right for a base disk only. Writes touching unallocated grains run one at
 * a time (the check, the parent read and the write are one step); writes to allocated grains do not
 * wait, since a grain, once allocated in the top, stays so.
 */
export class ChainDisk implements VirtualDisk {
  readonly encrypted = false as const;
  readonly format = 'vmdk' as const;
  readonly top: VmdkDisk;
  readonly parent: VirtualDisk;
  readonly #resources: ChainResources;
  readonly #cow = new Mutex();
  #closed = false;

  constructor(top: VmdkDisk, parent: VirtualDisk, resources: ChainResources) {
    this.top = top;
    this.parent = parent;
    this.#resources = resources;
  }

  get path(): string {
    return this.top.path;
  }
  get capacity(): number {
    return this.top.capacity;
  }
  get subformat(): string {
    return this.top.subformat;
  }
  get descriptor(): Descriptor | undefined {
    return this.top.descriptor;
  }
  get readOnly(): boolean {
    return this.top.readOnly;
  }
  get grainSize(): number | undefined {
    return this.top.grainSize;
  }

  /**
   * Give up the shared lock this chain holds on the top's parent, keeping every layer open: for a
   * caller in this process that then takes the parent's lock exclusively to merge the top into it
   * (a live snapshot commit, src/serve/commit.ts) while reads go on through the chain — the merge
   * writes only grains the top holds, which reads resolve in the top. The lock is not taken again:
   * close the chain afterwards. Only the outermost ChainDisk of a chain holds it.
   */
  releaseParentLock(): void {
    this.#resources.releaseParent?.();
  }

  /** The layers from the top down to the base disk. */
  layers(): VirtualDisk[] {
    const out: VirtualDisk[] = [this.top];
    let p: VirtualDisk = this.parent;
    while (p instanceof ChainDisk) {
      out.push(p.top);
      p = p.parent;
    }
    out.push(p);
    return out;
  }

  async read(position: number, length: number): Promise<Buffer> {
    const buf = await this.top.read(position, length); // checks the arguments
    await this.#fillFromParent(position, buf);
    return buf;
  }

  async readInto(position: number, target: Uint8Array): Promise<void> {
    await this.top.readInto(position, target);
    await this.#fillFromParent(position, target);
  }

  /** Overwrite the top's unallocated ranges of `target` (read as zeros) with the parent's bytes. */
  async #fillFromParent(position: number, target: Uint8Array): Promise<void> {
    const reads: Array<Promise<void>> = [];
    for await (const h of this.top.holeRanges(position, position + target.length)) {
      const at = h.offset - position;
      reads.push(this.parent.readInto(h.offset, target.subarray(at, at + h.length)));
    }
    await Promise.all(reads);
  }

  async write(position: number, data: Uint8Array): Promise<void> {
    if (!(data instanceof Uint8Array) || data.length === 0) return this.top.write(position, data);
    const gb = this.top.grainSize;
    if (gb === undefined || !(await this.#touchesHole(position, position + data.length))) return this.top.write(position, data);
    await this.#cow.run(async () => {
      // Re-checked under the mutex: another write may have allocated the grains meanwhile.
      const end = position + data.length;
      const headStart = Math.floor(position / gb) * gb;
      const tailEnd = Math.min(Math.ceil(end / gb) * gb, this.capacity);
      const from = headStart < position && (await this.#touchesHole(headStart, position)) ? headStart : position;
      const to = tailEnd > end && (await this.#touchesHole(end, tailEnd)) ? tailEnd : end;
      if (from === position && to === end) return this.top.write(position, data);
      const whole = Buffer.allocUnsafe(to - from);
      if (from < position) await this.readInto(from, whole.subarray(0, position - from));
      if (to > end) await this.readInto(end, whole.subarray(end - from));
      whole.set(data, position - from);
      await this.top.write(from, whole);
    });
  }

  async #touchesHole(start: number, end: number): Promise<boolean> {
    for await (const _ of this.top.holeRanges(start, end)) return true;
    return false;
  }

  /**
   * The union of the layers' allocations (a zeroed grain of the top over the parent's data is
   * reported allocated: a superset is what callers need, they read what is listed).
   */
  async *allocatedRanges(start = 0, end = this.capacity): AsyncIterable<AllocatedRange> {
    const a = this.top.allocatedRanges(start, end)[Symbol.asyncIterator]();
    const b = this.parent.allocatedRanges(start, end)[Symbol.asyncIterator]();
    let x = await a.next();
    let y = await b.next();
    let run: AllocatedRange | undefined;
    while (!x.done || !y.done) {
      let r: AllocatedRange;
      if (y.done || (!x.done && x.value.offset <= y.value.offset)) {
        r = x.value as AllocatedRange;
        x = await a.next();
      } else {
        r = y.value;
        y = await b.next();
      }
      if (run && r.offset <= run.offset + run.length) {
        run.length = Math.max(run.length, r.offset + r.length - run.offset);
      } else {
        if (run) yield run;
        run = { offset: r.offset, length: r.length };
      }
    }
    if (run) yield run;
  }

  /** Only zeroed-grain entries can deallocate in a child (a hole would show the parent): see VmdkDisk.deallocate. */
  deallocate(position: number, length: number): Promise<AllocatedRange[]> {
    return this.top.deallocate(position, length);
  }

  /** The host space of every layer. */
  async allocatedBytes(): Promise<number> {
    return (await this.top.allocatedBytes()) + (await this.parent.allocatedBytes());
  }

  /** Every file of the chain, the top's first. */
  files(): string[] {
    const out = this.top.files();
    for (const f of this.parent.files()) if (!out.includes(f)) out.push(f);
    return out;
  }

  updateDescriptor(edit: (d: Descriptor) => unknown): Promise<void> {
    return this.top.updateDescriptor(edit);
  }

  flush(): Promise<void> {
    return this.top.flush();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.top.close();
    } finally {
      try {
        await this.parent.close();
      } finally {
        this.#resources.release();
      }
    }
  }
}

/** A chain whose top claims a parent it cannot have: for messages of src/vmdk/chain-open.ts. */
export function chainError(message: string, file: string): VmdkFormatError {
  return new VmdkFormatError('ERR_VMDK_CHAIN', message, { file });
}

/**
 * The ranges of [start, end) that `layer` (one layer, opened alone) holds itself — allocated or
 * zeroed grains, which hide its parent's bytes in a chain; coalesced, in order. A disk without
 * sparse extents holds every byte. Snapshot commit moves exactly these into the parent.
 */
export async function* ownRanges(layer: VirtualDisk, start = 0, end = layer.capacity): AsyncIterable<AllocatedRange> {
  if (!(layer instanceof VmdkDisk)) {
    if (end > start) yield { offset: start, length: end - start };
    return;
  }
  let at = start;
  for await (const h of layer.holeRanges(start, end)) {
    if (h.offset > at) yield { offset: at, length: h.offset - at };
    at = h.offset + h.length;
  }
  if (end > at) yield { offset: at, length: end - at };
}
