import { randomBytes } from 'node:crypto';
import { expected } from '../errors.js';
import {
  KeyError,
  describeKeySafe,
  unlockKeySafe,
  type KeyCache,
  type LockerInfo,
  type LockerSpec,
  type UnlockedBy,
  type UnlockOptions,
} from '../keys/index.js';
import { decodeBase64String } from '../keys/base64.js';
import { sealDekWith } from '../keys/envelope.js';
import { openMacThenEncryptData, sealMacThenEncrypt, type RandomSource } from '../keys/locked-data.js';
import { VmError } from './errors.js';
import { VmxFile, entryLine, type VmxLine, type VmxLineEnding } from './vmx-file.js';

/**
 * VMware's encrypted .vmx (Workstation/Fusion password-protected VMs, and vSphere VM Encryption),
 * read and written byte-compatibly:
 *
 *   clear lines         `.encoding`, `displayName`, `encryptedVM.guid` (those the plain file has)
 *   encryption.keySafe  a KeySafe whose lockers (phrase = password, fqid = key provider) each open
 *                       the config key, a key dict `type=key:cipher=AES-256:key=<base64>`
 *   encryption.data     base64(IV 16 ‖ AES-256-CBC(configKey[0..32], IV, PKCS#7(text)) ‖
 *                       HMAC-SHA-1(configKey, text)), text = every other line of the plain file
 *
 * The MAC is over the plaintext (MAC-then-encrypt, one key for both): opening decrypts, then checks
 * padding and MAC in constant time with one outcome (src/keys/locked-data.ts), so a wrong password,
 * a modified encryption.data, bad padding and a bad MAC are all ERR_WRONG_KEY, with no padding oracle.
 *
 * Byte-exact round trip: the encrypted text starts with one line vmseal adds,
 *
 *   vmseal.clearLines = "<i>,<j>,…[;noeol]"
 *
 * the 0-based numbers of the plain file's lines that were kept in the clear (where they go back on
 * decryption), and `;noeol` when the plain file's last line was a clear line without a line ending.
 * Decryption removes exactly that line (the first line of the text, when its key is
 * vmseal.clearLines). A text without it (written by VMware) gets its clear lines in front.
 */
export const VMX_CLEAR_KEYS: readonly string[] = Object.freeze(['.encoding', 'displayName', 'encryptedVM.guid']);
/** The keys of the encryption itself. */
export const VMX_KEYSAFE_KEY = 'encryption.keySafe';
export const VMX_DATA_KEY = 'encryption.data';
/** The one line vmseal adds, first in the encrypted text. */
export const VMX_LAYOUT_KEY = 'vmseal.clearLines';

const IV_BYTES = 16;
const MAC_BYTES = 20; // HMAC-SHA-1
/** The config key's dict cipher: Workstation writes AES-256; XTS-AES-256 (a 64-byte key) is read too. */
const CONFIG_KEY_BYTES: Readonly<Record<string, number>> = { 'AES-256': 32, 'XTS-AES-256': 64 };

const CLEAR = new Set(VMX_CLEAR_KEYS.map((k) => k.toLowerCase()));
const isClear = (l: VmxLine): boolean => l.kind === 'entry' && CLEAR.has(l.key!.toLowerCase());
const ENCRYPTION_KEYS = new Set([VMX_KEYSAFE_KEY, VMX_DATA_KEY].map((k) => k.toLowerCase()));
const isEncryptionLine = (l: VmxLine): boolean => l.kind === 'entry' && ENCRYPTION_KEYS.has(l.key!.toLowerCase());

export interface EncryptVmxOptions {
  /** Lockers of the new config key: phrase (`{ kind: 'passphrase', kdf: 'workstation' }` is what Workstation opens) and/or provider. */
  lockers: LockerSpec[];
  /** KEKs fetched or created for provider lockers are stored here. */
  cache?: KeyCache;
}

/** How to open the config key: a passphrase (phrase lockers), key providers and a cache (provider lockers). */
export type DecryptVmxOptions = UnlockOptions;

export interface DecryptVmxResult {
  /** The plain .vmx bytes. */
  plain: Buffer;
  /** Which locker opened the config key. */
  unlockedBy: UnlockedBy;
  /** The lockers of the KeySafe (no secrets). */
  lockers: LockerInfo[];
}

/** Test-only randomness: the config key, the IV of encryption.data, and every salt, phrase id and locker IV. */
export interface VmxRandomness {
  configKey: () => Buffer;
  dataIv: () => Buffer;
  keySafe: RandomSource;
}

const CRYPTO_RANDOMNESS: VmxRandomness = { configKey: () => randomBytes(32), dataIv: () => randomBytes(IV_BYTES), keySafe: randomBytes };

/** Whether a parsed .vmx is encrypted (has encryption.keySafe or encryption.data). */
export function isEncryptedVmx(vmx: VmxFile): boolean {
  return vmx.lines.some(isEncryptionLine);
}

/** The lockers of an encrypted .vmx's KeySafe (no key needed). Throws ERR_VMX_NOT_ENCRYPTED for a plain one. */
export function vmxLockers(vmx: VmxFile): LockerInfo[] {
  return describeKeySafe(encryptionParts(vmx).keySafe);
}

/** Encrypt a plain .vmx (its bytes) into VMware's construction; returns the encrypted file's bytes. */
export async function encryptVmx(plain: Uint8Array, options: EncryptVmxOptions): Promise<Buffer> {
  return encryptVmxWith(plain, options, CRYPTO_RANDOMNESS);
}

/** encryptVmx with its randomness given (tests compute the expected bytes). Not exported from the package. */
export async function encryptVmxWith(plain: Uint8Array, options: EncryptVmxOptions, random: VmxRandomness): Promise<Buffer> {
  if (options === null || typeof options !== 'object') throw new VmError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const vmx = VmxFile.parse(plain);
  if (isEncryptedVmx(vmx)) throw new VmError('ERR_VMX_ENCRYPTED', 'the .vmx is already encrypted (it has encryption.keySafe or encryption.data)');
  const nl = vmx.newline;
  const clearIndexes: number[] = [];
  const inner: VmxLine[] = [];
  vmx.lines.forEach((l, i) => (isClear(l) ? clearIndexes.push(i) : inner.push(l)));
  const last = vmx.lines.at(-1);
  const noEol = last !== undefined && last.ending === '' && isClear(last);
  const layout = entryLine(VMX_LAYOUT_KEY, clearIndexes.join(',') + (noEol ? ';noeol' : ''), nl);
  const text = VmxFile.fromLines([layout, ...inner]).toBuffer();

  const configKey = random.configKey();
  try {
    if (configKey.length !== 32) throw new VmError('ERR_INVALID_ARGUMENT', 'the config key must be 32 bytes');
    const keySafe = await sealDekWith(
      configKey,
      { cipher: 'AES-256', lockers: options.lockers, ...(options.cache ? { cache: options.cache } : {}) },
      random.keySafe,
    );
    const data = sealMacThenEncrypt(configKey, 'HMAC-SHA-1', text, random.dataIv()).toString('base64');
    const clear = clearIndexes.map((i) => vmx.lines[i]!).map((l) => ({ ...l, ending: (l.ending || nl) as VmxLineEnding }));
    return VmxFile.fromLines([...clear, entryLine(VMX_KEYSAFE_KEY, keySafe, nl), entryLine(VMX_DATA_KEY, data, nl)]).toBuffer();
  } finally {
    configKey.fill(0);
    text.fill(0);
  }
}

/** The KeySafe text and the decoded encryption.data of an encrypted .vmx (refused when malformed). */
function encryptionParts(vmx: VmxFile): { keySafe: string; data: Buffer } {
  const where = vmx.file ?? 'the .vmx';
  const ks = vmx.entries(VMX_KEYSAFE_KEY);
  const data = vmx.entries(VMX_DATA_KEY);
  if (ks.length === 0 && data.length === 0) {
    throw new VmError('ERR_VMX_NOT_ENCRYPTED', `${where} is not encrypted (it has no encryption.keySafe and no encryption.data)`, { file: vmx.file });
  }
  for (const [lines, key, other] of [
    [ks, VMX_KEYSAFE_KEY, VMX_DATA_KEY],
    [data, VMX_DATA_KEY, VMX_KEYSAFE_KEY],
  ] as const) {
    if (lines.length === 0) throw new VmError('ERR_VMX_FORMAT', `${where} has ${other} but no ${key} line`, { file: vmx.file });
    if (lines.length > 1) {
      throw new VmError('ERR_VMX_FORMAT', `${where} has ${lines.length} ${key} lines (lines ${lines.map((l) => l.number).join(', ')}); expected one`, {
        file: vmx.file,
        line: lines[1]!.number,
      });
    }
  }
  const keySafe = vmx.rawBytes(VMX_KEYSAFE_KEY)!.toString('latin1');
  const dataLine = data[0]!;
  const bytes = decodeBase64String(vmx.rawBytes(VMX_DATA_KEY)!.toString('latin1'));
  // The length is public (it is in the file): refusing a wrong one early tells nothing about the key.
  if (bytes === undefined || bytes.length < IV_BYTES + 16 + MAC_BYTES || (bytes.length - IV_BYTES - MAC_BYTES) % 16 !== 0) {
    throw new VmError(
      'ERR_VMX_FORMAT',
      `the value of encryption.data (line ${dataLine.number} of ${where}) is not canonical base64 of IV 16 + whole AES blocks + HMAC-SHA-1 20 bytes`,
      { file: vmx.file, line: dataLine.number },
    );
  }
  return { keySafe, data: bytes };
}

/**
 * Decrypt an encrypted .vmx (its bytes): unlock the config key with `options` (passphrase, providers,
 * cache), open encryption.data, and put the clear lines back. Errors: ERR_VMX_NOT_ENCRYPTED,
 * ERR_VMX_FORMAT, the key layer's ERR_KEYSAFE, ERR_WRONG_KEY, ERR_NO_KEY, ERR_DISK_LOCKED, ….
 */
export async function decryptVmx(encrypted: Uint8Array, options: DecryptVmxOptions = {}, file?: string): Promise<DecryptVmxResult> {
  if (options === null || typeof options !== 'object') throw new VmError('ERR_INVALID_ARGUMENT', expected('an object', 'options', options));
  const vmx = VmxFile.parse(encrypted, file);
  const where = file ?? 'the .vmx';
  const { keySafe, data } = encryptionParts(vmx);
  const lockers = describeKeySafe(keySafe);
  const unlocked = await unlockKeySafe(keySafe, options);
  let text: Buffer | undefined;
  try {
    if (CONFIG_KEY_BYTES[unlocked.cipher] !== unlocked.key.length) {
      throw new VmError('ERR_VMX_FORMAT', `the config key of ${where} is an ${unlocked.cipher} key; a .vmx config key is AES-256 (or XTS-AES-256)`, { file });
    }
    text = openMacThenEncryptData(unlocked.key, 'HMAC-SHA-1', data);
  } finally {
    unlocked.key.fill(0);
  }
  if (text === undefined) {
    throw new KeyError('ERR_WRONG_KEY', `encryption.data of ${where} does not verify under its config key: the file was modified or damaged`, { file });
  }
  try {
    const plain = VmxFile.parse(text, `the encrypted text of ${where}`);
    const clear = vmx.lines.filter((l) => !isEncryptionLine(l));
    return { plain: restoreLayout(plain, clear), unlockedBy: unlocked.unlockedBy, lockers };
  } finally {
    text.fill(0);
  }
}

/** Put the clear lines back where the layout line says (or in front), dropping the layout line. */
function restoreLayout(text: VmxFile, clear: VmxLine[]): Buffer {
  let lines = [...text.lines];
  let positions: number[] | undefined;
  let noEol = false;
  const first = lines[0];
  if (first?.kind === 'entry' && first.key!.toLowerCase() === VMX_LAYOUT_KEY.toLowerCase()) {
    lines = lines.slice(1);
    const m = /^((?:0|[1-9][0-9]{0,8})(?:,(?:0|[1-9][0-9]{0,8}))*)?(;noeol)?$/.exec(first.rawValue!);
    const list = m?.[1] === undefined ? [] : m[1].split(',').map(Number);
    const total = lines.length + clear.length;
    // Valid only when it still describes these lines (a VMware tool may have edited the clear part).
    if (m && list.length === clear.length && list.every((p, i) => p < total && (i === 0 || p > list[i - 1]!))) {
      positions = list;
      noEol = m[2] !== undefined;
    }
  }
  let out: VmxLine[];
  if (positions === undefined) {
    out = [...clear.map((l) => ({ ...l, ending: l.ending || text.newline })), ...lines];
  } else {
    out = [];
    let c = 0;
    let t = 0;
    for (let i = 0; i < lines.length + clear.length; i++) out.push(positions[c] === i ? clear[c++]! : lines[t++]!);
    if (noEol && positions.at(-1) === out.length - 1) out[out.length - 1] = { ...out.at(-1)!, ending: '' };
  }
  return VmxFile.fromLines(out).toBuffer();
}
