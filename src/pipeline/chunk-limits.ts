/**
 * The chunk sizes of the streaming jobs. A module without imports because the CLI's grammar checks
 * `--chunk-size` at start-up, before any command runs, and ./options.ts would bring the disk layer
 * with it (its one door, src/disk/for-pipeline.ts). Chunks are also whole multiples of the largest
 * data-unit size: options.ts names that CHUNK_ALIGN.
 */

/**
 * 4 MiB: measured against 8 MiB on the 2-core VM, a 2 GiB encrypt ran faster in tmpfs (every one
 * of 7 interleaved pairs; 32 MiB was slower still: the chunks in flight no longer stay in the
 * caches between read, encrypt and write) and no slower on a disk with O_DIRECT (4 MiB is also the
 * largest request the virtio disk takes in one piece). 2 MiB bought nothing more.
 */
export const DEFAULT_CHUNK = 4 << 20;
export const MAX_CHUNK = 256 << 20;
