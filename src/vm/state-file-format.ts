/**
 * The header of vmseal's state-file container and the per-chunk nonce and associated data
 * (docs/vm.md, "State files"). Pure encoding and checks; the streaming I/O is in state-file.ts.
 *
 * Header, all integers big-endian:
 *
 *   off  len  field
 *     0    8  magic "VMSEALST"
 *     8    2  version (2; version 1 is read too)
 *    10    2  flags (0; any other value is refused)
 *    12    4  chunk size (1 MiB = 1048576; versions 1 and 2 refuse any other)
 *    16    8  original length of the plain file, bytes (≤ 2^53 - 1)
 *    24   16  file id (random)
 *    40    4  reserved (0)
 *    44    4  K = length of the KeySafe text, 1..65536
 *    48    K  KeySafe text (ASCII): the file key (AES-256, 32 bytes) locked by the VM's lockers
 *
 * then the chunks, N = max(1, ceil(length / chunk size)); chunk i holds min(chunk size, length - i·chunk
 * size) bytes of AES-256-GCM ciphertext followed by its 16-byte tag:
 *
 *   key   (32) = version 2: HKDF-SHA-256(ikm = file key, salt = file id, info = "vmseal state chunks")
 *                version 1: the file key itself
 *   nonce (12) = file id[0..4] ‖ u64 i
 *   AAD   (41) = SHA-256(header bytes 0..44) ‖ u64 i ‖ u8 (1 for chunk N-1, else 0)
 *
 * Why version 2 derives a key per file id: a served UEFI variables file is re-encrypted under the
 * same file key (its KeySafe unchanged: re-sealing would need every locker, a passphrase included)
 * on every write, with a new random file id. Only 4 bytes of the id reach the nonce, so under one
 * GCM key the nonces of thousands of rewrites would collide by the birthday bound (~q²/2^33), and a
 * repeated GCM nonce gives away the plaintexts' XOR and the authentication key. A key of its own
 * for each 16-byte file id makes every rewrite a fresh key: no nonce is ever used twice under one.
 *
 * The header hash stops before K and the KeySafe text on purpose: a shallow rekey rewrites only the
 * KeySafe (new lockers, same file key) and must not need the key to recompute every tag. The KeySafe
 * is authenticated by its own lockers' MACs, and a KeySafe of another key fails every chunk's tag.
 */
import { createHash } from 'node:crypto';
import { hkdfSha256 } from '../util/hkdf.js';
import { VmError } from './errors.js';

export const STATE_FILE_MAGIC = 'VMSEALST';
/** The version vmseal writes (2: chunk keys derived per file id); version 1 files are read too. */
export const STATE_FILE_VERSION = 2;
/** Versions this vmseal reads. */
const READABLE_VERSIONS: readonly number[] = [1, 2];
/** Plain bytes per chunk; every chunk but the last holds exactly this many. */
export const STATE_CHUNK_SIZE = 1 << 20;
/** Bytes of the GCM tag after each chunk's ciphertext. */
export const STATE_TAG_BYTES = 16;
/** Bytes of the fixed fields before the KeySafe text. */
export const STATE_FIXED_HEADER_BYTES = 48;
/** Longest KeySafe text a header may carry (the key layer's own limit). */
export const STATE_MAX_KEYSAFE_BYTES = 65_536;
/** The dict cipher of the file key inside the KeySafe (32 bytes, as VMware's config keys). */
export const STATE_KEY_CIPHER = 'AES-256';
export const STATE_KEY_BYTES = 32;

const HASHED_BYTES = 44; // magic .. reserved: the fields a shallow rekey never changes
const FILE_ID_BYTES = 16;

export interface StateFileHeader {
  version: number;
  chunkSize: number;
  /** Length of the plain file, in bytes. */
  length: number;
  /** 16 random bytes that make this file's nonces and associated data its own. */
  fileId: Buffer;
  /** The KeySafe text that locks the file key. */
  keySafe: string;
  /** Bytes of the whole header; chunk 0 starts here. */
  headerBytes: number;
  /** SHA-256 of header bytes 0..44, part of every chunk's associated data. */
  headerHash: Buffer;
}

/** Number of chunks of a plain file of `length` bytes (an empty file still has one, so its header is authenticated). */
export function chunkCount(length: number, chunkSize = STATE_CHUNK_SIZE): number {
  return Math.max(1, Math.ceil(length / chunkSize));
}

/** Plain bytes in chunk `index`. */
export function chunkLength(length: number, index: number, chunkSize = STATE_CHUNK_SIZE): number {
  return Math.min(chunkSize, length - index * chunkSize);
}

/** Size of the whole container for a plain file of `length` bytes and a header of `headerBytes`. */
export function containerSize(length: number, headerBytes: number, chunkSize = STATE_CHUNK_SIZE): number {
  return headerBytes + length + chunkCount(length, chunkSize) * STATE_TAG_BYTES;
}

/** Encode a header. The KeySafe text must be ASCII (KeySafe strings are %-escaped). */
export function encodeStateHeader(h: { length: number; fileId: Buffer; keySafe: string; chunkSize?: number; version?: number }): Buffer {
  const ks = Buffer.from(h.keySafe, 'latin1');
  const out = Buffer.alloc(STATE_FIXED_HEADER_BYTES + ks.length);
  out.write(STATE_FILE_MAGIC, 0, 'latin1');
  out.writeUInt16BE(h.version ?? STATE_FILE_VERSION, 8);
  out.writeUInt16BE(0, 10);
  out.writeUInt32BE(h.chunkSize ?? STATE_CHUNK_SIZE, 12);
  out.writeBigUInt64BE(BigInt(h.length), 16);
  h.fileId.copy(out, 24, 0, FILE_ID_BYTES);
  out.writeUInt32BE(0, 40);
  out.writeUInt32BE(ks.length, 44);
  ks.copy(out, STATE_FIXED_HEADER_BYTES);
  return out;
}

function formatError(file: string, what: string): VmError {
  return new VmError('ERR_VM_STATE_FORMAT', `${file} is not a vmseal state file: ${what}`, { file });
}

/**
 * Check the fixed part of a header (its first 48 bytes) and return K, the KeySafe length. `file`
 * names the file in messages.
 */
export function parseFixedHeader(fixed: Buffer, file: string): { keySafeBytes: number; length: number; chunkSize: number; fileId: Buffer; version: number } {
  if (fixed.length < STATE_FIXED_HEADER_BYTES) throw formatError(file, `it is ${fixed.length} bytes long, shorter than a header (${STATE_FIXED_HEADER_BYTES})`);
  if (fixed.toString('latin1', 0, 8) !== STATE_FILE_MAGIC) throw formatError(file, `its first 8 bytes are not "${STATE_FILE_MAGIC}"`);
  const version = fixed.readUInt16BE(8);
  if (!READABLE_VERSIONS.includes(version)) {
    throw new VmError(
      'ERR_VM_STATE_FORMAT',
      `${file} is a vmseal state file of version ${version}; this vmseal reads versions ${READABLE_VERSIONS.join(' and ')}: use a newer vmseal`,
      { file },
    );
  }
  const flags = fixed.readUInt16BE(10);
  if (flags !== 0) throw formatError(file, `header flags 0x${flags.toString(16)} are not 0`);
  const chunkSize = fixed.readUInt32BE(12);
  if (chunkSize !== STATE_CHUNK_SIZE) throw formatError(file, `chunk size ${chunkSize} is not ${STATE_CHUNK_SIZE}`);
  const length = fixed.readBigUInt64BE(16);
  if (length > BigInt(Number.MAX_SAFE_INTEGER)) throw formatError(file, `original length ${length} is beyond 2^53-1 bytes`);
  if (fixed.readUInt32BE(40) !== 0) throw formatError(file, 'reserved header bytes 40..43 are not 0');
  const keySafeBytes = fixed.readUInt32BE(44);
  if (keySafeBytes === 0 || keySafeBytes > STATE_MAX_KEYSAFE_BYTES) {
    throw formatError(file, `KeySafe length ${keySafeBytes} is not 1..${STATE_MAX_KEYSAFE_BYTES}`);
  }
  return { keySafeBytes, length: Number(length), chunkSize, fileId: Buffer.from(fixed.subarray(24, 40)), version };
}

/** The whole header, from its fixed part and the KeySafe bytes that follow it. */
export function parseStateHeader(fixed: Buffer, keySafeBytes: Buffer, file: string): StateFileHeader {
  const f = parseFixedHeader(fixed, file);
  if (keySafeBytes.length !== f.keySafeBytes) throw formatError(file, `the header ends after ${keySafeBytes.length} of ${f.keySafeBytes} KeySafe bytes`);
  for (const b of keySafeBytes) {
    if (b < 0x21 || b > 0x7e) throw formatError(file, 'its KeySafe text is not printable ASCII');
  }
  return {
    version: f.version,
    chunkSize: f.chunkSize,
    length: f.length,
    fileId: f.fileId,
    keySafe: keySafeBytes.toString('latin1'),
    headerBytes: STATE_FIXED_HEADER_BYTES + f.keySafeBytes,
    headerHash: headerHash(fixed),
  };
}

/** SHA-256 of the header fields a shallow rekey never changes (bytes 0..44). */
export function headerHash(header: Buffer): Buffer {
  return createHash('sha256').update(header.subarray(0, HASHED_BYTES)).digest();
}

/** The AES-256-GCM key of a file's chunks (see the top of this file); the caller wipes it. */
export function chunkKey(fileKey: Buffer, header: Pick<StateFileHeader, 'version' | 'fileId'>): Buffer {
  if (header.version === 1) return Buffer.from(fileKey);
  return hkdfSha256(fileKey, 'vmseal state chunks', 32, header.fileId);
}

/** The 12-byte GCM nonce of chunk `index`. */
export function chunkNonce(fileId: Buffer, index: number): Buffer {
  const n = Buffer.alloc(12);
  fileId.copy(n, 0, 0, 4);
  n.writeBigUInt64BE(BigInt(index), 4);
  return n;
}

/** The associated data of chunk `index`: header hash ‖ index ‖ last-chunk flag. */
export function chunkAad(hash: Buffer, index: number, last: boolean): Buffer {
  const a = Buffer.alloc(41);
  hash.copy(a, 0);
  a.writeBigUInt64BE(BigInt(index), 32);
  a[40] = last ? 1 : 0;
  return a;
}
