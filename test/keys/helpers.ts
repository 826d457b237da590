import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { KeyProvider, KeyRef } from '../../src/keys/index.js';
import { randomBytes, randomUUID } from 'node:crypto';
import { VmsealError } from '../../src/errors.js';

export const vectors = JSON.parse(readFileSync(fileURLToPath(new URL('../fixtures/keysafe/vectors.json', import.meta.url)), 'utf8')) as {
  roundTrip: string[];
  john: Array<{ password: string; hash: string; dict: string }>;
  hashcat: Array<{ password: string; hash: string; firstBlock: string }>;
  vmsealFqid: Array<{ kekHex: string; providerId: string; keyId: string; dict: string; keySafe: string }>;
};

/** Independent re-implementation of the KeySafe field escaping, for building expected strings. */
export function esc(s: string): string {
  return [...Buffer.from(s, 'utf8')]
    .map((b) => (/[A-Za-z0-9]/.test(String.fromCharCode(b)) ? String.fromCharCode(b) : '%' + b.toString(16).padStart(2, '0')))
    .join('');
}

/** Build a Workstation phrase KeySafe from a John the Ripper `$vmx$1$0$0$rounds$salt$data` line. */
export function keySafeFromJohn(hash: string): string {
  const [, , , , , rounds, saltHex, dataHex] = hash.split('$');
  const salt = Buffer.from(saltHex!, 'hex').toString('base64').replace(/=/g, '%3d');
  const dict = `pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=${rounds}:salt=${salt}`;
  const locked = Buffer.from(dataHex!, 'hex').toString('base64');
  return `vmware:key/list/(pair/(phrase/${esc('AAECAwQFBgc=')}/${esc(dict)},HMAC%2dSHA%2d1,${esc(locked)}))`;
}

/** A key provider in memory that can be switched off (an outage) and counts its calls. */
export class FakeProvider implements KeyProvider {
  readonly keys = new Map<string, Buffer>();
  up = true;
  gets = 0;
  creates = 0;
  constructor(readonly id = 'fake') {}
  private check(): void {
    if (!this.up) {
      // What the KMIP provider throws when no node answers.
      throw new VmsealError('ERR_KMS_UNAVAILABLE', `provider ${this.id} is down`);
    }
  }
  async createKey(): Promise<KeyRef> {
    this.check();
    this.creates++;
    const keyId = randomUUID();
    this.keys.set(keyId, randomBytes(32));
    return { providerId: this.id, keyId };
  }
  async getKey(keyId: string): Promise<Buffer> {
    this.check();
    this.gets++;
    const k = this.keys.get(keyId);
    if (!k) throw new Error(`no key ${keyId}`);
    return Buffer.from(k);
  }
  async destroyKey(keyId: string): Promise<void> {
    this.check();
    this.keys.delete(keyId);
  }
}

/** Expect a promise or function to throw an error with this code; returns the error. */
export async function codeOf(fn: () => unknown): Promise<string> {
  try {
    await fn();
  } catch (err) {
    return (err as { code?: string }).code ?? 'NO_CODE';
  }
  return 'NO_ERROR';
}
