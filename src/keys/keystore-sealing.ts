/**
 * The sealing primitives of the local keystore and its backups: AES-256-GCM with an AAD that names
 * what is sealed (so a sealed value cannot be moved to another field or entry), and scrypt for keys
 * derived from passphrases.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt as scryptCb } from 'node:crypto';
import { expected } from '../errors.js';
import { invalidArgument } from './errors.js';

export const GCM_IV = 12;
export const GCM_TAG = 16;

export interface ScryptCost {
  n: number;
  r: number;
  p: number;
}

/** IV 12 ‖ AES-256-GCM(key, plain) ‖ tag 16, with a fresh random IV. */
export function gcmSeal(key: Buffer, plain: Uint8Array, aad: string): Buffer {
  const iv = randomBytes(GCM_IV);
  const c = createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([c.update(plain), c.final()]);
  return Buffer.concat([iv, body, c.getAuthTag()]);
}

/** Open GCM-sealed bytes; undefined if the key is wrong or the data was modified. */
export function gcmOpen(key: Buffer, sealed: Buffer, aad: string): Buffer | undefined {
  if (sealed.length < GCM_IV + GCM_TAG) return undefined;
  const d = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, GCM_IV));
  d.setAAD(Buffer.from(aad, 'utf8'));
  d.setAuthTag(sealed.subarray(sealed.length - GCM_TAG));
  const out = d.update(sealed.subarray(GCM_IV, sealed.length - GCM_TAG));
  try {
    return Buffer.concat([out, d.final()]);
  } catch {
    return undefined;
  } finally {
    out.fill(0);
  }
}

/** A 32-byte key from a passphrase (maxmem sized to the cost, so that Node does not refuse a valid one). */
export function scryptKey(pass: Uint8Array, salt: Buffer, cost: ScryptCost): Promise<Buffer> {
  return new Promise((res, rej) =>
    scryptCb(pass, salt, 32, { N: cost.n, r: cost.r, p: cost.p, maxmem: 128 * cost.n * cost.r + 128 * cost.r * cost.p + 2 ** 20 }, (e, k) =>
      e ? rej(e) : res(k),
    ),
  );
}

/** Check a scrypt cost object (power-of-two n up to 2^20, bounded memory). */
export function checkScryptCost(s: unknown, name: string): ScryptCost {
  const c = s as { n?: unknown; r?: unknown; p?: unknown } | null;
  const ok =
    c !== null &&
    typeof c === 'object' &&
    Number.isInteger(c.n) &&
    (c.n as number) >= 2 &&
    (c.n as number) <= 2 ** 20 &&
    ((c.n as number) & ((c.n as number) - 1)) === 0 &&
    Number.isInteger(c.r) &&
    (c.r as number) >= 1 &&
    (c.r as number) <= 32 &&
    Number.isInteger(c.p) &&
    (c.p as number) >= 1 &&
    (c.p as number) <= 16 &&
    128 * (c.n as number) * (c.r as number) <= 512 * 2 ** 20;
  if (!ok) throw invalidArgument(expected('{ n: power of two 2..2^20, r: 1..32, p: 1..16 }', name, s));
  return { n: c!.n as number, r: c!.r as number, p: c!.p as number };
}
