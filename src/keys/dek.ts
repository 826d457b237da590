import { randomBytes } from 'node:crypto';
import { expectedOneOf } from '../errors.js';
import { XTS_KEY_BYTES_128, XTS_KEY_BYTES_256 } from '../xts/constants.js';
import { invalidArgument } from './errors.js';

/** vmseal's names of the data ciphers (the disk layers use these). */
export type DiskCipher = 'aes-256-xts' | 'aes-128-xts';
/** The disk ciphers, the default first. src/disk/params.ts builds its cipher table on this list. */
export const DISK_CIPHERS: readonly DiskCipher[] = ['aes-256-xts', 'aes-128-xts'];

/**
 * Cipher names used inside VMware crypto dicts (`type=key:cipher=…:key=…`) and the key length of each.
 * XTS keys are two AES keys back to back (data key ‖ tweak key).
 */
export const DICT_CIPHER_KEY_BYTES: Readonly<Record<string, number>> = Object.freeze({
  'AES-128': 16,
  'AES-192': 24,
  'AES-256': 32,
  'XTS-AES-128': 32,
  'XTS-AES-256': 64,
});

const DISK_TO_DICT: Readonly<Record<DiskCipher, string>> = { 'aes-256-xts': 'XTS-AES-256', 'aes-128-xts': 'XTS-AES-128' };

/** DEK length in bytes for a disk cipher. */
export function dekLength(cipher: DiskCipher): number {
  return cipher === 'aes-256-xts' ? XTS_KEY_BYTES_256 : XTS_KEY_BYTES_128;
}

/** Accept a vmseal disk cipher name and return it, or throw ERR_INVALID_ARGUMENT. */
export function checkDiskCipher(cipher: unknown, argName = 'cipher'): DiskCipher {
  if ((DISK_CIPHERS as readonly unknown[]).includes(cipher)) return cipher as DiskCipher;
  throw invalidArgument(expectedOneOf(DISK_CIPHERS, argName, cipher));
}

/** The VMware dict name of a vmseal disk cipher ('aes-256-xts' → 'XTS-AES-256'). */
export function dictCipherName(cipher: DiskCipher): string {
  return DISK_TO_DICT[checkDiskCipher(cipher)];
}

/** The vmseal disk cipher of a VMware dict cipher name, or undefined if it is not an XTS cipher. */
export function diskCipherOf(dictCipher: string): DiskCipher | undefined {
  if (dictCipher === 'XTS-AES-256') return 'aes-256-xts';
  if (dictCipher === 'XTS-AES-128') return 'aes-128-xts';
  return undefined;
}

/**
 * A fresh per-disk data key from the OS CSPRNG: 64 bytes for aes-256-xts, 32 for aes-128-xts.
 * The two XTS halves (data key, tweak key) are distinct, as IEEE 1619 requires (and as the Linux
 * kernel's xts_verify_key insists in FIPS mode). The caller owns the buffer and wipes it with `wipe`.
 */
export function generateDek(cipher: DiskCipher = 'aes-256-xts'): Buffer {
  const length = dekLength(checkDiskCipher(cipher));
  const half = length / 2;
  for (;;) {
    const dek = randomBytes(length);
    if (!dek.subarray(0, half).equals(dek.subarray(half))) return dek;
    wipe(dek); // probability 2^-128 / 2^-256: practically unreachable, but the rule is the rule
  }
}

/** Overwrite a secret buffer with zeros (a no-op for undefined). */
export function wipe(buf: Uint8Array | undefined | null): void {
  if (buf) buf.fill(0);
}
