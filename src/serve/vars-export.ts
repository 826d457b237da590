/**
 * Exports of a VM's state files: a UEFI variables file kept in vmseal's state-file container
 * (docs/vm.md) is served as a small writable NBD export — qemu's second pflash unit — whose
 * plaintext exists only in this process's memory (src/vm/state-file-image.ts). A flush (and, unasked,
 * a timer soon after a write) re-encrypts the file and replaces it atomically, so a crash leaves the
 * old variables or the new.
 *
 * StateFileDisk gives a StateFileImage the shape export.ts serves (an encrypted disk with a data unit
 * of one byte: no read-modify-write at this level, no holes). `vmServeDisks` turns a qemu VM folder
 * (vmseal-vm.json) into the disks `serve()` opens: each disk of the manifest and `<name>-vars`.
 */
import { basename, resolve } from 'node:path';
import type { UnlockOptions } from '../keys/index.js';
import type { AllocatedRange } from '../vmdk/index.js';
import { diskState, readManifest, readStateFileHeader } from '../vm/index.js';
import { resolveInFolder } from '../vm/manifest.js';
import { refuseMixed } from '../vm/all-or-none.js';
import { openStateFileImage, type StateFileImage } from '../vm/state-file-image.js';
import type { ServeDisk } from './host.js';
import type { Shape } from './locked.js';

export class StateFileDisk {
  /** Served as encrypted (ExportInfo.encrypted): the file at rest is. */
  readonly encrypted = true as const;
  /** Any offset and length: the image patches its memory. */
  readonly unitSize = 1;
  readonly grainSize: undefined = undefined;
  readonly subformat = 'vmseal state file';
  /** Not a VMDK: no change bitmap is kept for it (backup/change-bitmap.ts tracks VMDK generations). */
  readonly format = 'raw' as const;
  readonly descriptor: undefined = undefined;
  readonly #image: StateFileImage;

  constructor(image: StateFileImage) {
    this.#image = image;
  }

  get path(): string {
    return this.#image.path;
  }

  get capacity(): number {
    return this.#image.length;
  }

  readInto(position: number, target: Uint8Array): Promise<void> {
    return this.#image.read(position, Buffer.from(target.buffer, target.byteOffset, target.byteLength));
  }

  /** Answered once in memory (write-back: durable at the next flush — a FLUSH, or a FUA write's — see state-file-image.ts). */
  writeUnordered(position: number, data: Uint8Array): Promise<void> {
    return this.#image.write(position, data);
  }

  async *allocatedRanges(start = 0, end = this.capacity): AsyncIterable<AllocatedRange> {
    if (end > start) yield { offset: start, length: end - start };
  }

  /** Never called (the export is not sparse); nothing is deallocated. */
  deallocate(): Promise<AllocatedRange[]> {
    return Promise.resolve([]);
  }

  flush(): Promise<void> {
    return this.#image.flush();
  }

  close(): Promise<void> {
    return this.#image.close();
  }
}

/** What a locked state-file export reports (locked.ts): its plain length, from the header (no key needed). */
export async function stateFileShape(path: string): Promise<Shape> {
  return { capacity: (await readStateFileHeader(path)).length, sparse: false, subformat: 'vmseal state file' };
}

/** Open a state file for serving (the caller holds its lock). */
export async function openStateFileDisk(path: string, options: { keys: UnlockOptions; readOnly: boolean }): Promise<StateFileDisk> {
  return new StateFileDisk(await openStateFileImage(path, options));
}

/**
 * The disks of a qemu VM folder for `serve()`: every disk of its manifest (export named after its
 * file, as for any disk) and its UEFI variables file as `<name>-vars` (name: the manifest's, else
 * the folder's). A VM whose disks are partly encrypted is refused (ERR_VM_MIXED, listing the disks
 * in each state) unless `allowMixed`.
 */
export async function vmServeDisks(dir: string, options: { allowMixed?: boolean } = {}): Promise<ServeDisk[]> {
  const manifest = await readManifest(dir);
  const disks = manifest.disks.map((d) => resolveInFolder(dir, d.file));
  const states = await Promise.all(manifest.disks.map(async (d, i) => ({ device: `disks[${i}] (${d.file})`, ...(await diskState(disks[i]!)) })));
  if (options.allowMixed !== true) refuseMixed(states, 'vmseal serve --vm', dir);
  const out: ServeDisk[] = disks.map((path) => ({ path }));
  if (manifest.uefiVars) out.push({ path: resolveInFolder(dir, manifest.uefiVars.file), name: `${manifest.name ?? basename(resolve(dir))}-vars` });
  return out;
}
