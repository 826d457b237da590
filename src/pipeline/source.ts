/**
 * Opening the input of a job: plain (any VMDK subformat or raw) or encrypted (then decrypted
 * through an EncryptedDisk). The source is always opened read-only: jobs never modify their input.
 */
import { openDisk as openVmdk, type VirtualDisk } from '../vmdk/index.js';
import {
  DiskError,
  EncryptedDisk,
  assertNoJournal,
  encryptionOf,
  jobLineError,
  unlockInner,
  type UnlockOptions,
  type EncryptionParams,
} from '../disk/for-pipeline.js';

export interface Source {
  /** Reads give plaintext (decrypted when the input is encrypted). */
  disk: VirtualDisk | EncryptedDisk;
  /** The input's own encryption (null: plain). */
  encryption: EncryptionParams | null;
  /** The disk holding the input's stored bytes (ciphertext for an encrypted input). */
  stored: VirtualDisk;
  /**
   * True for an encrypted input opened with `unlock: 'later'` and not unlocked yet: `disk` is then
   * the ciphertext (`stored`); unlockSource() gives the plaintext view.
   */
  locked?: boolean;
  close(): Promise<void>;
}

export interface OpenSourceOptions {
  keys?: UnlockOptions;
  /** What to do with an encrypted input: decrypt it (needs keys), or refuse it. */
  encrypted: 'decrypt' | 'refuse';
  /** What to do with a plain input: read it, or refuse it (ERR_NOT_ENCRYPTED). */
  plain: 'read' | 'refuse';
  threads?: number;
  /** Let an input with an unfinished in-place job through (resume uses this). */
  allowJob?: boolean;
  readOnly?: boolean;
  /** What the file is (default: detected; see JobOptions.format). */
  format?: 'vmdk' | 'raw';
  /** Sparse structure checks (the VMDK layer's openDisk `check`): 'full' for verify. */
  check?: 'lazy' | 'full';
  /**
   * 'later': an encrypted input is returned locked (its ciphertext, no keys needed), for a job that
   * may copy the ciphertext as it is and unlock only if it must (unlockSource). Default 'now'.
   */
  unlock?: 'now' | 'later';
}

export async function openSource(path: string, opts: OpenSourceOptions): Promise<Source> {
  if (!opts.allowJob) assertNoJournal(path);
  const stored = await openVmdk(path, {
    readOnly: opts.readOnly ?? true,
    allowEncrypted: true,
    ...(opts.format ? { format: opts.format } : {}),
    ...(opts.check ? { check: opts.check } : {}),
  });
  try {
    const enc = encryptionOf(stored);
    if (enc?.job !== undefined && !opts.allowJob) throw jobLineError(path, enc.job);
    if (!enc) {
      if (opts.plain === 'refuse') throw new DiskError('ERR_NOT_ENCRYPTED', `${path} is not encrypted`);
      return { disk: stored, encryption: null, stored, close: () => stored.close() };
    }
    if (opts.encrypted === 'refuse') {
      throw new DiskError('ERR_DISK_ENCRYPTED', `${path} is already encrypted (${enc.params.cipher}); use rekey to change its keys, or convert to copy it`);
    }
    const locked: Source = { disk: stored, encryption: enc.params, stored, locked: true, close: () => stored.close() };
    if (opts.unlock === 'later') return locked;
    return await unlockSource(locked, opts, { name: path });
  } catch (err) {
    await stored.close().catch(() => undefined);
    throw err;
  }
}

/**
 * The plaintext view of a source opened locked (openSource's `unlock: 'later'`): the keys unlock
 * it, its authenticator and data check are verified. An unlocked or plain source is returned as is.
 * On failure the caller still owns (and closes) `source`.
 */
export async function unlockSource(
  source: Source,
  opts: Pick<OpenSourceOptions, 'keys' | 'threads'>,
  say: { name?: string; why?: string } = {},
): Promise<Source> {
  if (!source.locked || source.encryption === null) return source;
  const { stored, encryption } = source;
  if (!opts.keys) {
    throw new DiskError(
      'ERR_DISK_ENCRYPTED',
      `${say.name ?? stored.path} is encrypted (${encryption.cipher}); give keys (a key provider or passphrase) to read it${say.why ?? ''}`,
    );
  }
  const disk = await unlockInner(stored, encryption, opts.keys, opts.threads ? { threads: opts.threads } : {});
  return { disk, encryption, stored, close: () => disk.close() };
}
