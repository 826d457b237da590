/** Key length of XTS-AES-128 in bytes (Key1 ‖ Key2, 16 bytes each). */
export const XTS_KEY_BYTES_128 = 32;
/** Key length of XTS-AES-256 in bytes (Key1 ‖ Key2, 32 bytes each). */
export const XTS_KEY_BYTES_256 = 64;
/** The smallest data unit: one AES block (IEEE 1619 requires at least 128 bits). */
export const XTS_MIN_UNIT_SIZE = 16;
/** The largest data unit this library accepts: 1 MiB (disks use 512 B or 4 KiB). */
export const XTS_MAX_UNIT_SIZE = 1024 * 1024;
/** The largest thread pool / per-call thread count. */
export const XTS_MAX_THREADS = 256;
/** The largest data unit number: tweaks are 128-bit, but unit numbers are limited to 64 bits (dm-crypt plain64). */
export const XTS_MAX_UNIT_NUMBER = 2n ** 64n - 1n;

/** The implementations, fastest first. */
export const XTS_IMPLEMENTATIONS = ['vaes-avx512', 'vaes-avx2', 'aesni', 'portable'] as const;
export type XtsImplementation = (typeof XTS_IMPLEMENTATIONS)[number];
