/**
 * The container shared by the journals of whole-chain jobs (commit-journal.ts, chain-rekey-journal.ts):
 *
 *   magic (8 ASCII bytes, one per kind of job) | u32 n (little-endian) | n bytes of UTF-8 JSON | 32-byte seal
 *
 * Seal: HMAC-SHA-256 over the JSON, keyed with HKDF-SHA-256(DEK, salt empty, info = the kind's label,
 * 32 B), so only whoever unlocks the DEK wrote a journal that resume acts on; without a DEK (a plain
 * chain) the seal is a SHA-256 checksum of the JSON. Each kind checks its own header's fields.
 */
import { createHash, createHmac } from 'node:crypto';
import { hkdfSha256 } from '../util/hkdf.js';
import { open, readFile } from 'node:fs/promises';

const LENGTH_BYTES = 4;
const SEAL_BYTES = 32;

/** The seal of `json`: keyed by `dek` under `label`, or a checksum when there is no key. */
export function sealJournal(dek: Uint8Array | null, label: string, json: Uint8Array): Buffer {
  if (!dek) return createHash('sha256').update(json).digest();
  const key = hkdfSha256(dek, label, 32);
  try {
    return createHmac('sha256', key).update(json).digest();
  } finally {
    key.fill(0);
  }
}

/** The journal's bytes: `magic`, the JSON's length, the JSON, its seal. */
export function encodeSealedJournal(magic: Buffer, json: Buffer, seal: Buffer): Buffer {
  const n = Buffer.alloc(LENGTH_BYTES);
  n.writeUInt32LE(json.length);
  return Buffer.concat([magic, n, json, seal]);
}

/**
 * Read the journal at `path` (at most `maxBytes`) and split it into its JSON text, parsed value and
 * seal; `bad(why)` makes the error thrown for a journal that is not one of this kind (the seal is not
 * checked here). A missing file rejects with the system's ENOENT.
 */
export async function readSealedJournal<E extends Error>(
  path: string,
  magic: Buffer,
  maxBytes: number,
  bad: (why: string) => E,
): Promise<{ json: Buffer; value: unknown; seal: Buffer }> {
  const fh = await open(path, 'r');
  let bytes: Buffer;
  try {
    if ((await fh.stat()).size > maxBytes) throw bad('too large');
    bytes = await readFile(fh);
  } finally {
    await fh.close();
  }
  if (bytes.length < magic.length + LENGTH_BYTES + SEAL_BYTES || !bytes.subarray(0, magic.length).equals(magic)) {
    throw bad('wrong magic or truncated');
  }
  const n = bytes.readUInt32LE(magic.length);
  const start = magic.length + LENGTH_BYTES;
  if (start + n + SEAL_BYTES !== bytes.length) throw bad('wrong length');
  const json = bytes.subarray(start, start + n);
  let value: unknown;
  try {
    value = JSON.parse(json.toString('utf8'));
  } catch {
    throw bad('not JSON');
  }
  return { json, value, seal: bytes.subarray(start + n) };
}
