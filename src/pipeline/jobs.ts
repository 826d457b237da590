/** The public jobs built on runCopy: encrypt, decrypt, convert. */
import { expected } from '../errors.js';
import { runCopy } from './copy.js';
import { PipelineError } from './errors.js';
import type { EncryptSpec, JobOptions, JobResult, OutputOptions, UnlockOptions } from './options.js';

export type EncryptDiskOptions = JobOptions & OutputOptions & EncryptSpec;
export type DecryptDiskOptions = JobOptions & OutputOptions & { keys: UnlockOptions };
export interface ConvertDiskOptions extends JobOptions, OutputOptions {
  /** Unlocks an encrypted input. */
  keys?: UnlockOptions;
  /** Encrypt the output under a NEW DEK (the input may be plain or encrypted). */
  encrypt?: EncryptSpec;
  /** Write a plain output (the input must be encrypted). */
  decrypt?: boolean;
}

function optionsObject<T>(o: T, name = 'options'): T {
  if (o === null || typeof o !== 'object') throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object', name, o));
  return o;
}

/**
 * Encrypt a plain disk (any VMDK subformat vmseal reads, or a raw image) into a new encrypted VMDK
 * under a fresh DEK sealed by `lockers`. The input is never modified; the output appears atomically.
 * Output subformat: `subformat`, default the input's (raw → monolithicFlat); raw and
 * streamOptimized are refused (ERR_UNSUPPORTED_OUTPUT). An encrypted input: ERR_DISK_ENCRYPTED.
 */
export async function encryptDisk(input: string, output: string, options: EncryptDiskOptions): Promise<JobResult> {
  const o = optionsObject(options);
  const { lockers, cipher, unitSize, cache, ...rest } = o;
  return runCopy({
    operation: 'encrypt',
    input,
    output,
    opts: rest,
    encrypt: { lockers, ...(cipher ? { cipher } : {}), ...(unitSize ? { unitSize } : {}), ...(cache ? { cache } : {}) },
    requireInput: 'plain',
  });
}

/**
 * Decrypt an encrypted disk into a new plain VMDK (default: the input's subformat) or a raw image
 * (`subformat: 'raw'`). A plain input: ERR_NOT_ENCRYPTED.
 */
export async function decryptDisk(input: string, output: string, options: DecryptDiskOptions): Promise<JobResult> {
  const o = optionsObject(options);
  const { keys, ...rest } = o;
  if (keys === undefined)
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? } to decrypt with', 'keys', keys));
  return runCopy({ operation: 'decrypt', input, output, opts: rest, keys, decrypt: true, requireInput: 'encrypted' });
}

/**
 * Replace an encrypted disk by its decryption, under the same name and subformat: the plain disk is
 * written aside (a staging folder in the disk's folder, so it needs room for a second copy) and
 * committed over the encrypted one by renames (the staging commit record, see staging.ts): a crash
 * leaves the encrypted disk or the plain one, never a mix, and the next job on the disk (or
 * resumeDisk) finishes or removes what was left. Not journaled chunk by chunk like encryptInPlace.
 * A plain input: ERR_NOT_ENCRYPTED. The plain files get mode 0o600 unless `mode` says otherwise.
 */
export async function decryptDiskReplacing(path: string, options: JobOptions & Pick<OutputOptions, 'mode'> & { keys: UnlockOptions }): Promise<JobResult> {
  const o = optionsObject(options);
  const { keys, ...rest } = o;
  if (keys === undefined)
    throw new PipelineError('ERR_INVALID_ARGUMENT', expected('an object { passphrase?, providers?, cache? } to decrypt with', 'keys', keys));
  return runCopy({
    operation: 'decrypt',
    input: path,
    output: path,
    opts: { ...rest, force: true },
    keys,
    decrypt: true,
    requireInput: 'encrypted',
    replaceInput: true,
  });
}

/**
 * Copy a disk into another subformat (or a raw image), optionally encrypting (`encrypt`: new DEK)
 * or decrypting (`decrypt: true`). An encrypted input without either stays encrypted under the same
 * DEK, with the same encryption lines.
 */
export async function convertDisk(input: string, output: string, options: ConvertDiskOptions = {}): Promise<JobResult> {
  const o = optionsObject(options);
  const { keys, encrypt, decrypt, ...rest } = o;
  if (encrypt !== undefined && decrypt) throw new PipelineError('ERR_INVALID_ARGUMENT', 'encrypt and decrypt cannot both be given');
  return runCopy({
    operation: 'convert',
    input,
    output,
    opts: rest,
    ...(keys ? { keys } : {}),
    ...(encrypt ? { encrypt } : {}),
    ...(decrypt ? { decrypt: true, requireInput: 'encrypted' as const } : {}),
  });
}
