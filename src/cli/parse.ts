/**
 * Parsers for option values. Each returns the typed value or throws a usage error (exit 2) that
 * names the option, what it received and what it expects. None echoes a value that could be secret
 * (no option here carries a secret: passphrases never come from argv).
 */
import { CIPHERS, UNIT_SIZES, canEncryptSubformat, type CipherName, type DataUnitSize } from '../disk/params.js';
import { usageError } from './errors.js';
import { wholeNumberIn } from './whole-number.js';
import { KDF_LIMITS } from '../keys/kdf-limits.js';

/** The output formats the CLI accepts for --subformat (VMDK createTypes plus raw). */
export const SUBFORMATS = ['raw', 'monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const;
export type Subformat = (typeof SUBFORMATS)[number];

/**
 * The subformats an encrypted disk can be written as: raw has no descriptor to carry the key, and
 * streamOptimized compression gains nothing on ciphertext (checkEncryptedSubformat refuses both).
 */
export const ENCRYPTED_SUBFORMATS: readonly Subformat[] = SUBFORMATS.filter(canEncryptSubformat);

// The ciphers and data-unit sizes are the disk layer's (src/disk/params.ts owns them).
export { CIPHERS, UNIT_SIZES, type CipherName };
export type UnitSize = DataUnitSize;

export const KEY_PROVIDERS = ['local', 'kmip'] as const;
export type KeyProviderKind = (typeof KEY_PROVIDERS)[number];

function quoteForMessage(value: string): string {
  // Option values are not secret, but keep messages one line and bounded.
  const shown = value.length > 60 ? `${value.slice(0, 57)}...` : value;
  return JSON.stringify(shown);
}

/** A subformat name, matched case-insensitively (users type "monolithicsparse"). */
export function parseSubformat(value: string, option = '--subformat'): Subformat {
  const found = SUBFORMATS.find((s) => s.toLowerCase() === value.trim().toLowerCase());
  if (!found) {
    throw usageError(`${option} ${quoteForMessage(value)} is not a known subformat`, `Use one of: ${SUBFORMATS.join(', ')}`);
  }
  return found;
}

/** What a file is, said instead of guessed: `--format raw|vmdk`. */
export type DiskFormat = 'vmdk' | 'raw';

export function parseFormat(value: string, option = '--format'): DiskFormat {
  const v = value.trim().toLowerCase();
  if (v === 'vmdk' || v === 'raw') return v;
  throw usageError(`${option} ${quoteForMessage(value)} is not a disk format`, `Use ${option} vmdk or ${option} raw`);
}

export function parseCipher(value: string): CipherName {
  const found = CIPHERS.find((c) => c === value.trim().toLowerCase());
  if (!found) throw usageError(`--cipher ${quoteForMessage(value)} is not supported`, `Use ${CIPHERS.join(' or ')}`);
  return found;
}

export function parseUnitSize(value: string): UnitSize {
  const n = Number(value.trim());
  const found = UNIT_SIZES.find((u) => u === n);
  if (found === undefined) throw usageError(`--unit-size ${quoteForMessage(value)} is not supported`, `Use ${UNIT_SIZES.join(' or ')} (bytes)`);
  return found;
}

export function parseKeyProvider(value: string): KeyProviderKind {
  const found = KEY_PROVIDERS.find((k) => k === value.trim().toLowerCase());
  if (!found) throw usageError(`--key-provider ${quoteForMessage(value)} is not known`, 'Use local or kmip');
  return found;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1024 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1024 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1024 ** 4,
  tib: 1024 ** 4,
};

/**
 * A byte size: a whole number with an optional binary suffix, as qemu-img takes them
 * ("64M" = "64MiB" = 67108864; K, M, G, T; a decimal point is allowed when the result is whole:
 * "1.5G"). Bounded by `min`/`max` (inclusive).
 */
export function parseSize(value: string, option: string, bounds: { min?: number; max?: number } = {}): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(value);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) {
    throw usageError(`${option} ${quoteForMessage(value)} is not a size`, 'Write a number with an optional K, M, G or T suffix, e.g. 128M');
  }
  const bytes = Number(m[1]) * unit;
  if (!Number.isSafeInteger(bytes)) {
    throw usageError(`${option} ${quoteForMessage(value)} is not a whole number of bytes`, 'Write a whole number of bytes, e.g. 128M');
  }
  const { min = 0, max = Number.MAX_SAFE_INTEGER } = bounds;
  if (bytes < min || bytes > max) {
    throw usageError(`${option} ${quoteForMessage(value)} is out of range`, `Give a size from ${formatBytes(min)} to ${formatBytes(max)}`);
  }
  return bytes;
}

export interface Endpoint {
  host: string;
  port: number;
}

/** KMIP's registered port, used when an endpoint gives none. */
export const KMIP_DEFAULT_PORT = 5696;

/**
 * A comma-separated list of key-server endpoints: `host[:port]`, `[v6addr][:port]`.
 * Grammar per element: host := name | IPv4 | "[" IPv6 "]"; port := 1..65535 (default 5696).
 */
export function parseEndpoints(value: string, option = '--kms'): Endpoint[] {
  const parts = value
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  if (parts.length === 0) throw usageError(`${option} is empty`, 'Give host:port[,host:port…], e.g. kms1.example.com:5696');
  return parts.map((part) => {
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9._-]+))(?::(\d{1,5}))?$/.exec(part);
    if (!m) {
      throw usageError(
        `${option} element ${quoteForMessage(part)} is not host:port`,
        'Give host:port[,host:port…]; write IPv6 addresses in brackets, e.g. [::1]:5696',
      );
    }
    const port = m[3] === undefined ? KMIP_DEFAULT_PORT : Number(m[3]);
    if (port < 1 || port > 65535) {
      throw usageError(`${option} element ${quoteForMessage(part)} has port ${port}`, 'A port is 1 to 65535');
    }
    return { host: (m[1] ?? m[2])!, port };
  });
}

/** "1.5 GiB" etc. for humans: binary units, 3 significant digits. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let i = 0;
  while (Math.abs(value) >= 1024 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  if (i === 0) return `${bytes} B`;
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${units[i]}`;
}

/** Throughput for humans, in decimal MB/s as `dd` and the benchmark tables print it. */
export function formatRate(bytes: number, seconds: number): string {
  if (seconds <= 0) return '-';
  return `${(bytes / seconds / 1e6).toFixed(bytes / seconds >= 1e8 ? 0 : 1)} MB/s`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-';
  if (seconds < 10) return `${seconds.toFixed(2)} s`;
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(seconds / 60);
  const s = Math.round(seconds % 60);
  return `${m} min ${s} s`;
}

/**
 * --pbkdf2-rounds: the PBKDF2 rounds of new recovery passphrase lockers, at least
 * KDF_LIMITS.minChosenPbkdf2Rounds (fewer is refused, not silently raised).
 */
export function parsePbkdf2Rounds(value: string): number {
  return parseInteger(value, '--pbkdf2-rounds', { min: KDF_LIMITS.minChosenPbkdf2Rounds, max: KDF_LIMITS.maxPbkdf2Rounds });
}

/** A whole number in [min, max] (thread counts, timeouts). */
export function parseInteger(value: string, option: string, bounds: { min: number; max: number }): number {
  const n = wholeNumberIn(value, bounds);
  if (n === undefined) {
    throw usageError(
      `${option} ${quoteForMessage(value)} is not a whole number from ${bounds.min} to ${bounds.max}`,
      `Give ${option} a whole number from ${bounds.min} to ${bounds.max}`,
    );
  }
  return n;
}

/**
 * --mode: permission bits as an octal string of 1 to 4 digits ("640", "0640"), at most 0777.
 * Only octal digits: "0o640", symbolic modes and decimal-looking values outside 0-7 are refused.
 */
export function parseMode(value: string, option = '--mode'): number {
  const n = /^[0-7]{1,4}$/.test(value) ? Number.parseInt(value, 8) : Number.NaN;
  if (!(n >= 0 && n <= 0o777)) {
    throw usageError(
      `${option} ${quoteForMessage(value)} is not an octal file mode`,
      `Give ${option} octal permission bits from 0000 to 0777, e.g. 0600 or 0640`,
    );
  }
  return n;
}
