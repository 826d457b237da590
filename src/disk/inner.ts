/**
 * What src/disk needs from a VirtualDisk of src/vmdk, written structurally so that this layer
 * states its assumptions in one place (src/vmdk's VmdkDisk satisfies it).
 */
export interface ByteRange {
  offset: number;
  length: number;
}

export interface DescriptorView {
  get(key: string): string | undefined;
  entries(): Iterable<readonly [string, string]>;
  readonly createType: string;
}

export interface DescriptorEdit extends DescriptorView {
  set(key: string, value: string, options?: { after?: string }): unknown;
  delete(key: string): boolean;
}

export interface InnerDisk {
  readonly path: string;
  readonly capacity: number;
  readonly format: 'vmdk' | 'raw';
  readonly subformat: string;
  readonly readOnly: boolean;
  /** Grain size in bytes of sparse extents; undefined for flat disks. */
  readonly grainSize: number | undefined;
  readonly descriptor: DescriptorView | undefined;
  read(position: number, length: number): Promise<Buffer>;
  readInto(position: number, target: Uint8Array): Promise<void>;
  write(position: number, data: Uint8Array): Promise<void>;
  /** Data-backed ranges in order, coalesced. */
  allocatedRanges(start?: number, end?: number): AsyncIterable<ByteRange>;
  /** Bytes the disk's files use on the file system. */
  allocatedBytes(): Promise<number>;
  files(): string[];
  updateDescriptor(edit: (d: DescriptorEdit) => void | Promise<void>): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
}
