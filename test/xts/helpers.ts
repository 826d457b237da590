// Shared helpers of the XTS tests: the IEEE 1619 vectors and node:crypto as the reference XTS.
import { createCipheriv, createDecipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { xtsInfo } from '../../src/xts/index.js';
import type { XtsImplementation } from '../../src/xts/index.js';

export interface Ieee1619Vector {
  id: string;
  vector: number;
  keyBits: number;
  key: string;
  tweak: string;
  dataUnit?: string;
  dataUnitBits: number;
  plaintext: string;
  ciphertext: string;
}

export const vectors: Ieee1619Vector[] = JSON.parse(readFileSync(new URL('../fixtures/ieee1619.json', import.meta.url), 'utf8')) as Ieee1619Vector[];

export const hex = (s: string): Buffer => Buffer.from(s, 'hex');

/** Every implementation this machine runs, fastest first. */
export const implementations = xtsInfo().available as XtsImplementation[];

/** The tweak block of unit n: n as a 128-bit little-endian integer (dm-crypt plain64). */
export function unitTweak(n: bigint): Buffer {
  const tweak = Buffer.alloc(16);
  tweak.writeBigUInt64LE(BigInt.asUintN(64, n), 0);
  return tweak;
}

/** node:crypto the way a user without vmseal does it: one cipher object per data unit, IV = tweak. */
export function referenceXts(encrypt: boolean, key: Uint8Array, data: Uint8Array, unitSize: number, firstUnit: bigint): Buffer {
  const algorithm = key.byteLength === 32 ? 'aes-128-xts' : 'aes-256-xts';
  const out = Buffer.alloc(data.byteLength);
  for (let offset = 0, n = firstUnit; offset < data.byteLength; offset += unitSize, n++) {
    const unit = data.subarray(offset, offset + unitSize);
    const c = encrypt ? createCipheriv(algorithm, key, unitTweak(n)) : createDecipheriv(algorithm, key, unitTweak(n));
    const body = c.update(unit);
    const tail = c.final();
    out.set(body, offset);
    out.set(tail, offset + body.length);
  }
  return out;
}
