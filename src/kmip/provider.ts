/**
 * KmipKeyProvider: the KeyProvider whose KEKs live on a KMIP server or cluster.
 *
 * createKey  = Create (AES-256 symmetric key, usage mask Encrypt|Decrypt, a Name) + Activate
 * getKey     = Get Attributes (State) — refused unless Active — + Get, checked to be a plaintext
 *              AES-256 symmetric key (Raw or Transparent Symmetric Key)
 * retireKey  = Revoke (Cessation Of Operation): the key becomes Deactivated
 * destroyKey = Revoke (Cessation Of Operation) + Destroy
 * keyOwner   = Get Attributes (Name): a key made for one disk is named "vmseal-kek-disk-<disk id>"
 *
 * Why vmseal checks State itself: a KMIP server still returns a revoked (Deactivated) key's material
 * on Get — revocation only limits what the server itself will do with the key — so an old copy of
 * a disk would open with the KEK a deep rekey retired.
 *
 * Why Encrypt|Decrypt: a vmseal KEK is used locally as an AES-256-CBC + HMAC key over the
 * KeySafe's key dictionary (not through KMIP Wrap/Unwrap), which is encryption of data; it is the
 * mask PyKMIP's own client always sets, and what KMS policies commonly allow to be exported by Get.
 */
import type { CreateKeyOptions, KeyProvider, KeyRef } from '../keys/provider.js';
import { KmipClient, type KmipClientOptions, type KmipClientStats } from './client.js';
import { KmipError } from './errors.js';
import type { ProtocolVersion, QueryResult } from './messages.js';
import { invalid } from './options.js';
import { UsageMask, type KeyState } from './tags.js';
import { randomUUID } from 'node:crypto';

export const KEK_USAGE_MASK = UsageMask.Encrypt | UsageMask.Decrypt;
export const KEK_LENGTH_BYTES = 32;

export interface KmipKeyProviderOptions extends KmipClientOptions {
  /** Stable id of this provider (recorded in KeySafe lockers), e.g. the KMS cluster's name. */
  readonly id: string;
  /** Hand out keys that are not Active (revoked by a deep rekey), to restore old backups (default: false). */
  readonly allowRetired?: boolean;
}

/** The Name of a KEK created for one disk alone; the disk id in it is how a deep rekey knows it may retire the key. */
export const DISK_KEK_NAME_PREFIX = 'vmseal-kek-disk-';
const DISK_ID = /^[A-Za-z0-9._-]{1,64}$/;

/** Key ids are KMIP Unique Identifiers: non-empty text without control characters. */
function checkKeyId(keyId: unknown): string {
  if (typeof keyId !== 'string' || keyId.length === 0 || keyId.length > 1024 || /[\u0000-\u001f\u007f]/.test(keyId)) {
    throw invalid('keyId', 'a non-empty KMIP Unique Identifier string without control characters (at most 1024 characters)', keyId);
  }
  return keyId;
}

function checkName(name: unknown, option: string): string {
  if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name) > 4096) {
    throw invalid(option, 'a non-empty string of at most 4096 bytes', name);
  }
  return name;
}

export class KmipKeyProvider implements KeyProvider {
  readonly id: string;
  readonly client: KmipClient;
  readonly allowRetired: boolean;

  constructor(options: KmipKeyProviderOptions) {
    if (typeof options !== 'object' || options === null) throw invalid('options', 'an object', options);
    if (typeof options.id !== 'string' || options.id.length === 0 || options.id.length > 255 || /[\s/\\]/.test(options.id)) {
      throw invalid('id', 'a non-empty provider id without whitespace, "/" or "\\" (at most 255 characters)', options.id);
    }
    if (options.allowRetired !== undefined && typeof options.allowRetired !== 'boolean') throw invalid('allowRetired', 'a boolean', options.allowRetired);
    this.allowRetired = options.allowRetired === true;
    this.id = options.id;
    this.client = new KmipClient(options);
  }

  /**
   * Create an AES-256 KEK and activate it. Its Name: `name`; else "vmseal-kek-disk-<diskId>" for a key
   * made for one disk alone; else "vmseal-kek-<uuid>" (a caller-chosen name marks the key as shared). If
   * Activate fails, the new (still Pre-Active) key is destroyed before the error is thrown.
   */
  async createKey(opts: CreateKeyOptions = {}): Promise<KeyRef> {
    if (typeof opts !== 'object' || opts === null) throw invalid('opts', 'an object { name?, diskId? }', opts);
    if (opts.diskId !== undefined && (typeof opts.diskId !== 'string' || !DISK_ID.test(opts.diskId)))
      throw invalid('diskId', '1..64 characters [A-Za-z0-9._-]', opts.diskId);
    const name =
      opts.name !== undefined
        ? checkName(opts.name, 'name')
        : opts.diskId !== undefined
          ? `${DISK_KEK_NAME_PREFIX}${opts.diskId}`
          : `vmseal-kek-${randomUUID()}`;
    const keyId = await this.client.create({ lengthBits: 256, usageMask: KEK_USAGE_MASK, name });
    try {
      await this.client.activate(keyId);
    } catch (err) {
      await this.client.destroy(keyId).catch(() => undefined);
      throw err;
    }
    return { providerId: this.id, keyId };
  }

  /**
   * Fetch a KEK's 32 bytes; ERR_KEY_RETIRED if it is not Active (unless allowRetired), ERR_KMIP_KEY if
   * the object is not a plaintext AES-256 key.
   */
  async getKey(keyId: string): Promise<Buffer> {
    const id = checkKeyId(keyId);
    if (!this.allowRetired) {
      const state = await this.client.getState(id);
      if (state !== 'Active') {
        throw new KmipError(
          'ERR_KEY_RETIRED',
          `KMIP key ${id} on provider ${this.id} is ${state}, not Active (a deep rekey revokes the key it replaces): this is an old copy of the disk or of its descriptor`,
        );
      }
    }
    const key = await this.client.getSymmetricKey(id);
    const problems: string[] = [];
    if (key.algorithm !== undefined && key.algorithm !== 'AES') problems.push(`algorithm ${key.algorithm}`);
    if (key.lengthBits !== undefined && key.lengthBits !== 256) problems.push(`Cryptographic Length ${key.lengthBits}`);
    if (key.material.length !== KEK_LENGTH_BYTES) problems.push(`${key.material.length} bytes of key material`);
    if (problems.length > 0) {
      key.material.fill(0);
      throw new KmipError(
        'ERR_KMIP_KEY',
        `KMIP key ${id} on provider ${this.id} is not an AES-256 key (${problems.join(', ')}); expected AES, 256 bits, ${KEK_LENGTH_BYTES} bytes`,
      );
    }
    return key.material;
  }

  /**
   * Revoke (Cessation Of Operation), then Destroy. A key that cannot be revoked because it is not
   * Active (Pre-Active or already revoked) is still destroyed; a missing key is ERR_KMIP_OPERATION_FAILED.
   */
  async destroyKey(keyId: string): Promise<void> {
    const id = checkKeyId(keyId);
    try {
      await this.client.revoke(id);
    } catch (err) {
      if (!(err instanceof KmipError && err.code === 'ERR_KMIP_OPERATION_FAILED' && err.resultReason !== 'ItemNotFound')) throw err;
    }
    await this.client.destroy(id);
  }

  /** Revoke (Cessation Of Operation): the key is Deactivated, kept for restoring old backups. Revoking a revoked key is a no-op. */
  async retireKey(keyId: string): Promise<void> {
    const id = checkKeyId(keyId);
    if ((await this.client.getState(id)) !== 'Active') return;
    await this.client.revoke(id);
  }

  /** The disk id in the key's "vmseal-kek-disk-<diskId>" Name, or undefined for a shared key. */
  async keyOwner(keyId: string): Promise<string | undefined> {
    const names = await this.client.getNames(checkKeyId(keyId));
    const owners = new Set(names.filter((n) => n.startsWith(DISK_KEK_NAME_PREFIX)).map((n) => n.slice(DISK_KEK_NAME_PREFIX.length)));
    // Two disks named on one key would make it shared: never retire it then.
    return owners.size === 1 ? [...owners][0] : undefined;
  }

  /** Unique Identifiers of the keys with this Name (only those this client identity may see). */
  async locate(name: string): Promise<string[]> {
    return this.client.locate(checkName(name, 'name'));
  }

  /** The key's KMIP State: "PreActive", "Active", "Deactivated", "Compromised", "Destroyed", "DestroyedCompromised". */
  async getState(keyId: string): Promise<KeyState> {
    return this.client.getState(checkKeyId(keyId));
  }

  async query(): Promise<QueryResult> {
    return this.client.query();
  }

  async discoverVersions(): Promise<ProtocolVersion[]> {
    return this.client.discoverVersions();
  }

  get stats(): KmipClientStats {
    return this.client.stats;
  }

  async close(): Promise<void> {
    await this.client.close();
  }

  toString(): string {
    return `KmipKeyProvider(${this.id}: ${this.client.endpoints.join(', ')})`;
  }
}
