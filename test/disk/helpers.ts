// Test helpers shared by test/disk and test/pipeline: temp folders, a key provider held in memory,
// cheap passphrase lockers, and an independent XTS (node:crypto, one cipher per data unit).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCipheriv, createDecipheriv, randomBytes, createHash } from 'node:crypto';
import type { KeyProvider, KeyRef } from '../../src/keys/index.js';

export function tempDir(prefix = 'vmseal-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A KEK store in memory (like a KMS that never goes down unless `down` is set). */
export class MemoryKeyProvider implements KeyProvider {
  readonly keys = new Map<string, Buffer>();
  down = false;
  gets = 0;
  constructor(readonly id = 'memkms') {}
  async createKey(): Promise<KeyRef> {
    if (this.down) throw new Error('provider down');
    const keyId = `k${this.keys.size + 1}-${randomBytes(4).toString('hex')}`;
    this.keys.set(keyId, randomBytes(32));
    return { providerId: this.id, keyId };
  }
  async getKey(keyId: string): Promise<Buffer> {
    this.gets++;
    if (this.down) throw new Error('provider down');
    const k = this.keys.get(keyId);
    if (!k) throw new Error(`no key ${keyId}`);
    return Buffer.from(k);
  }
  async destroyKey(keyId: string): Promise<void> {
    this.keys.delete(keyId);
  }
}

/** A passphrase locker with a low round count: fast tests (never use such a count for real). */
export function phraseLocker(passphrase: string) {
  return { kind: 'passphrase' as const, passphrase, rounds: 1000 };
}

export function providerLocker(provider: KeyProvider, keyId?: string) {
  return { kind: 'provider' as const, provider, ...(keyId ? { keyId } : {}) };
}

/** Independent XTS over units: tweak = unit number little-endian (dm-crypt aes-xts-plain64). */
export function xtsReference(enc: boolean, key: Buffer, data: Buffer, unitSize: number, firstUnit: number): Buffer {
  const cipher = key.length === 64 ? 'aes-256-xts' : 'aes-128-xts';
  const out = Buffer.alloc(data.length);
  for (let off = 0, u = firstUnit; off < data.length; off += unitSize, u++) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(u));
    const c = enc ? createCipheriv(cipher, key, iv) : createDecipheriv(cipher, key, iv);
    c.update(data.subarray(off, off + unitSize)).copy(out, off);
    c.final();
  }
  return out;
}

export const sha256 = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Deterministic pseudo-random bytes (so failures reproduce). */
export function patternBytes(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}
