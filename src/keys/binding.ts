import { createHmac, timingSafeEqual } from 'node:crypto';
import { hkdfSha256 } from '../util/hkdf.js';
import { expected } from '../errors.js';
import { KeyError, invalidArgument } from './errors.js';
import { checkDiskCipher, dekLength, type DiskCipher } from './dek.js';

/**
 * The binding of a disk's encryption parameters to its DEK (docs/format.md, "Binding"):
 *
 *   bindingKey    = HKDF-SHA-256(IKM = DEK, salt = none (32 zero bytes), info = "vmseal binding v1", L = 32)
 *   message       = "vmseal binding v1" 0x00, then for each field in this order —
 *                   cipher, dataUnitSize, capacity, diskId, then extra fields sorted by name —
 *                   name (ASCII) 0x00 u32be(len(value)) value (UTF-8)
 *                   (numbers as decimal ASCII without leading zeros)
 *   authenticator = "v1." base64url-without-padding(HMAC-SHA-256(bindingKey, message))    (46 characters)
 *
 * Anyone holding the DEK can recompute it; nobody without it can forge one. So a changed parameter, a
 * KeySafe copied from another disk (another DEK) or any flipped bit is detected before data is decrypted.
 */
export interface BindingParams {
  /** Data cipher of the disk. */
  readonly cipher: DiskCipher;
  /** Bytes per XTS data unit (a power of two, 512..65536). */
  readonly dataUnitSize: number;
  /** Virtual disk capacity in bytes. */
  readonly capacity: number | bigint;
  /** A stable identity of the disk (e.g. a UUID the pipeline writes into the descriptor). 1..1024 characters. */
  readonly diskId: string;
  /** More name → value pairs to bind (names [a-zA-Z][a-zA-Z0-9]*, not one of the four above). */
  readonly extra?: Readonly<Record<string, string>>;
}

const LABEL = 'vmseal binding v1';
const VERSION_PREFIX = 'v1.';
const FIXED = new Set(['cipher', 'dataUnitSize', 'capacity', 'diskId']);

function checkParams(params: BindingParams): Array<[string, string]> {
  if (params === null || typeof params !== 'object') {
    throw invalidArgument(expected('an object', 'the binding params', params));
  }
  const cipher = checkDiskCipher(params.cipher, 'params.cipher');
  const u = params.dataUnitSize;
  if (!Number.isInteger(u) || u < 512 || u > 65536 || (u & (u - 1)) !== 0) {
    throw invalidArgument(expected('a power of two from 512 to 65536', 'params.dataUnitSize', u));
  }
  const c = params.capacity;
  const capOk = typeof c === 'bigint' ? c >= 0n : Number.isSafeInteger(c) && c >= 0;
  if (!capOk) throw invalidArgument(expected('a non-negative integer (bytes)', 'params.capacity', c));
  const id = params.diskId;
  if (typeof id !== 'string' || id.length < 1 || id.length > 1024) {
    throw invalidArgument(expected('a string of 1 to 1024 characters', 'params.diskId', id));
  }
  const fields: Array<[string, string]> = [
    ['cipher', cipher],
    ['dataUnitSize', String(u)],
    ['capacity', BigInt(c).toString()],
    ['diskId', id],
  ];
  if (params.extra !== undefined) {
    if (params.extra === null || typeof params.extra !== 'object') {
      throw invalidArgument(expected('an object', 'params.extra', params.extra));
    }
    for (const name of Object.keys(params.extra).sort()) {
      const value = params.extra[name];
      if (!/^[a-zA-Z][a-zA-Z0-9]{0,63}$/.test(name) || FIXED.has(name)) {
        throw invalidArgument(`params.extra has an invalid or reserved name (names are [a-zA-Z][a-zA-Z0-9]*, not ${[...FIXED].join(', ')})`);
      }
      if (typeof value !== 'string') throw invalidArgument(expected('a string', `params.extra.${name}`, value));
      fields.push([name, value]);
    }
  }
  return fields;
}

/** The canonical byte encoding of the parameters (exported for tests and docs). */
export function encodeBindingParams(params: BindingParams): Buffer {
  const fields = checkParams(params);
  // Sized first and written into one buffer: a disk's batch job binds it once per image, and the
  // three small buffers per field plus their concatenation were most of the encoding's time.
  let size = LABEL.length + 1;
  for (const [name, value] of fields) size += name.length + 1 + 4 + Buffer.byteLength(value, 'utf8');
  const out = Buffer.allocUnsafe(size); // every byte is written below
  let at = out.write(LABEL, 0, 'latin1');
  out[at++] = 0;
  for (const [name, value] of fields) {
    at += out.write(name, at, 'latin1'); // names are ASCII: the fixed four and [a-zA-Z][a-zA-Z0-9]*
    out[at++] = 0;
    const length = Buffer.byteLength(value, 'utf8');
    at = out.writeUInt32BE(length, at);
    at += out.write(value, at, 'utf8');
  }
  return out;
}

function checkDek(dek: unknown, cipher: DiskCipher): Buffer {
  if (!Buffer.isBuffer(dek)) throw invalidArgument(expected('a Buffer', 'dek', dek));
  if (dek.length !== dekLength(cipher)) {
    throw new KeyError('ERR_BINDING', `the DEK is ${dek.length} bytes but ${cipher} needs ${dekLength(cipher)}`);
  }
  return dek;
}

function tag(dek: Buffer, params: BindingParams): Buffer {
  const message = encodeBindingParams(params);
  checkDek(dek, params.cipher);
  const key = hkdfSha256(dek, LABEL, 32);
  try {
    return createHmac('sha256', key).update(message).digest();
  } finally {
    key.fill(0);
  }
}

/** The authenticator text for a descriptor value: "v1." + 43 base64url characters (no '=', no '"'). */
export function computeAuthenticator(dek: Buffer, params: BindingParams): string {
  return VERSION_PREFIX + tag(dek, params).toString('base64url');
}

/**
 * Check an authenticator; throws KeyError ERR_BINDING if it is malformed or does not match the DEK and
 * parameters (a changed parameter, a KeySafe from another disk, a modified authenticator).
 */
export function verifyAuthenticator(dek: Buffer, params: BindingParams, text: string): void {
  if (typeof text !== 'string') throw invalidArgument(expected('a string', 'the authenticator', text));
  const wanted = tag(dek, params);
  const body = text.startsWith(VERSION_PREFIX) ? text.slice(VERSION_PREFIX.length) : undefined;
  const given = body !== undefined && /^[A-Za-z0-9_-]{43}$/.test(body) ? Buffer.from(body, 'base64url') : undefined;
  if (given === undefined || given.toString('base64url') !== body) {
    throw new KeyError('ERR_BINDING', 'the authenticator is malformed (expected "v1." and 43 base64url characters)');
  }
  if (!timingSafeEqual(wanted, given)) {
    throw new KeyError(
      'ERR_BINDING',
      'the authenticator does not match this DEK and these encryption parameters (cipher, data unit size, capacity or disk id changed, or the KeySafe belongs to another disk)',
    );
  }
}
