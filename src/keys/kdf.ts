import { pbkdf2, scrypt } from 'node:crypto';
import { KeySafeError, invalidArgument } from './errors.js';
import { parseDict, serializeDict } from './dict.js';
import { decodeBase64String } from './base64.js';
import { DEFAULT_ROUNDS, KDF_LIMITS } from './kdf-limits.js';

/**
 * The passphrase → KEK derivations of `phrase` lockers, named in the locker's pass2key dict:
 *
 *   pass2key=PBKDF2-HMAC-SHA-1:cipher=AES-256:rounds=<N>:salt=<base64>        VMware Workstation/Fusion
 *   pass2key=PBKDF2-HMAC-SHA-256:cipher=AES-256:rounds=<N>:salt=<base64>      vmseal default (N ≥ 600,000)
 *   pass2key=SCRYPT:cipher=AES-256:n=<N>:r=<r>:p=<p>:salt=<base64>            vmseal option
 *
 * The KEK is 32 bytes (AES-256) from the passphrase's bytes (a string is taken as UTF-8, not normalized).
 * Costs read from a KeySafe are bounded so that a hostile file cannot make vmseal spin or allocate
 * without limit.
 */
export type Pass2KeyName = 'PBKDF2-HMAC-SHA-1' | 'PBKDF2-HMAC-SHA-256' | 'SCRYPT';

/**
 * The dict's cipher: AES-256 → a 32-byte KEK. XTS-AES-256 (a variant seen in public code) → a 64-byte KEK
 * of which AES-256-CBC uses the first 32 bytes and the HMAC all 64. vmseal reads both, writes AES-256.
 */
export type PhraseCipher = 'AES-256' | 'XTS-AES-256';

export type PhraseKdf =
  | { readonly name: 'PBKDF2-HMAC-SHA-1' | 'PBKDF2-HMAC-SHA-256'; readonly rounds: number; readonly salt: Buffer; readonly cipher?: PhraseCipher }
  | { readonly name: 'SCRYPT'; readonly n: number; readonly r: number; readonly p: number; readonly salt: Buffer; readonly cipher?: PhraseCipher };

/** KEK length for a phrase locker's dict cipher. */
export function phraseKekBytes(kdf: PhraseKdf): number {
  return kdf.cipher === 'XTS-AES-256' ? 64 : 32;
}

/** The `kdf` choices of a passphrase locker spec. */
export type PassphraseKdfChoice = 'pbkdf2-sha256' | 'scrypt' | 'workstation';

// In a module of its own (no imports): the CLI's grammar checks --pbkdf2-rounds against it at start-up.
export { KDF_LIMITS };

/** Defaults of new phrase lockers (docs/keys.md and docs/format.md state the same numbers). */
export const PHRASE_DEFAULTS = Object.freeze({
  kdf: 'pbkdf2-sha256' as PassphraseKdfChoice,
  pbkdf2Sha256Rounds: DEFAULT_ROUNDS.pbkdf2Sha256,
  scrypt: Object.freeze({ n: 2 ** 17, r: 8, p: 1 }),
  workstationRounds: DEFAULT_ROUNDS.workstation,
  saltBytes: 16,
});

function parseUint(text: string | undefined, what: string, position: number): number {
  if (text === undefined || !/^[1-9][0-9]{0,9}$/.test(text)) {
    throw new KeySafeError('kdf', position, `${what} must be a positive decimal integer`);
  }
  return Number(text);
}

/** Check KDF parameters against the limits; `position` ≥ 0 when they came from a KeySafe. */
export function checkKdf(kdf: PhraseKdf, position: number): void {
  const fail = (msg: string) => {
    if (position >= 0) throw new KeySafeError('kdf', position, msg);
    throw invalidArgument(msg);
  };
  if (kdf.salt.length < KDF_LIMITS.minSaltBytes || kdf.salt.length > KDF_LIMITS.maxSaltBytes) {
    fail(`the phrase locker's salt must be ${KDF_LIMITS.minSaltBytes}..${KDF_LIMITS.maxSaltBytes} bytes but it is ${kdf.salt.length}`);
  }
  if (kdf.name === 'SCRYPT') {
    const { n, r, p } = kdf;
    if (!Number.isInteger(n) || n < 2 || n > KDF_LIMITS.maxScryptN || (n & (n - 1)) !== 0) {
      fail(`scrypt n must be a power of two from 2 to ${KDF_LIMITS.maxScryptN} but it is ${n}`);
    }
    if (!Number.isInteger(r) || r < 1 || r > KDF_LIMITS.maxScryptR) fail(`scrypt r must be 1..${KDF_LIMITS.maxScryptR} but it is ${r}`);
    if (!Number.isInteger(p) || p < 1 || p > KDF_LIMITS.maxScryptP) fail(`scrypt p must be 1..${KDF_LIMITS.maxScryptP} but it is ${p}`);
    if (128 * n * r > KDF_LIMITS.maxScryptMemory) fail(`scrypt n·r needs more than ${KDF_LIMITS.maxScryptMemory / 2 ** 20} MiB`);
  } else if (!Number.isInteger(kdf.rounds) || kdf.rounds < 1 || kdf.rounds > KDF_LIMITS.maxPbkdf2Rounds) {
    fail(`PBKDF2 rounds must be 1..${KDF_LIMITS.maxPbkdf2Rounds} but it is ${kdf.rounds}`);
  }
}

/** Parse the (once unescaped) keyGenData of a phrase locker. `position` is the field's offset in the KeySafe. */
export function parsePass2KeyDict(text: string, position: number): PhraseKdf {
  const what = 'the phrase locker dict';
  const d = parseDict(text, what, position);
  const name = d.get('pass2key');
  const allowed = name === 'SCRYPT' ? ['pass2key', 'cipher', 'n', 'r', 'p', 'salt'] : ['pass2key', 'cipher', 'rounds', 'salt'];
  if (name !== 'PBKDF2-HMAC-SHA-1' && name !== 'PBKDF2-HMAC-SHA-256' && name !== 'SCRYPT') {
    throw new KeySafeError('kdf', position, `${what} names an unknown pass2key (expected PBKDF2-HMAC-SHA-1, PBKDF2-HMAC-SHA-256 or SCRYPT)`);
  }
  for (const k of d.keys()) {
    if (!allowed.includes(k)) throw new KeySafeError('dict', position, `${what} has an unexpected entry '${k}' (expected ${allowed.join(', ')})`);
  }
  const cipher = d.get('cipher');
  if (cipher !== 'AES-256' && cipher !== 'XTS-AES-256') {
    throw new KeySafeError('cipher', position, `${what} must have cipher=AES-256 (or XTS-AES-256)`);
  }
  const salt = decodeBase64String(d.get('salt') ?? '');
  if (salt === undefined) throw new KeySafeError('base64', position, `${what}: salt is missing or not canonical base64`);
  const kdf: PhraseKdf =
    name === 'SCRYPT'
      ? {
          name,
          n: parseUint(d.get('n'), `${what}: n`, position),
          r: parseUint(d.get('r'), `${what}: r`, position),
          p: parseUint(d.get('p'), `${what}: p`, position),
          salt,
          cipher,
        }
      : { name, rounds: parseUint(d.get('rounds'), `${what}: rounds`, position), salt, cipher };
  checkKdf(kdf, position);
  return kdf;
}

/** The pass2key dict text (before the KeySafe field escaping). */
export function serializePass2KeyDict(kdf: PhraseKdf): string {
  const salt = kdf.salt.toString('base64');
  if (kdf.name === 'SCRYPT') {
    return serializeDict([
      ['pass2key', 'SCRYPT'],
      ['cipher', kdf.cipher ?? 'AES-256'],
      ['n', String(kdf.n)],
      ['r', String(kdf.r)],
      ['p', String(kdf.p)],
      ['salt', salt],
    ]);
  }
  return serializeDict([
    ['pass2key', kdf.name],
    ['cipher', kdf.cipher ?? 'AES-256'],
    ['rounds', String(kdf.rounds)],
    ['salt', salt],
  ]);
}

/** Derive the KEK, 32 or 64 bytes (async: PBKDF2 and scrypt run on libuv's thread pool). The caller wipes it. */
export function deriveKek(passphrase: Uint8Array, kdf: PhraseKdf): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const done = (err: Error | null, key: Buffer) => (err ? reject(err) : resolve(key));
    if (kdf.name === 'SCRYPT') {
      scrypt(passphrase, kdf.salt, phraseKekBytes(kdf), { N: kdf.n, r: kdf.r, p: kdf.p, maxmem: 128 * kdf.n * kdf.r + 128 * kdf.r * kdf.p + 2 ** 20 }, done);
    } else {
      pbkdf2(passphrase, kdf.salt, kdf.rounds, phraseKekBytes(kdf), kdf.name === 'PBKDF2-HMAC-SHA-1' ? 'sha1' : 'sha256', done);
    }
  });
}

/** A short, non-secret description of a KDF for `describeKeySafe`. */
export function kdfSummary(kdf: PhraseKdf): { name: Pass2KeyName; rounds?: number; n?: number; r?: number; p?: number } {
  return kdf.name === 'SCRYPT' ? { name: kdf.name, n: kdf.n, r: kdf.r, p: kdf.p } : { name: kdf.name, rounds: kdf.rounds };
}
