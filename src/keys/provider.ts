/**
 * The one interface every key provider implements (the embedded local provider, KMIP, …).
 * A key provider makes and keeps key-encryption keys (KEKs): AES-256 keys that wrap per-disk DEKs.
 * `providerId` is what an `fqid/<VMWARE-NULL>/<providerId>/<keyId>` KeySafe locker records, so
 * that a disk names the provider and key that can unlock it.
 */
export interface KeyRef {
  readonly providerId: string;
  readonly keyId: string;
}

export interface CreateKeyOptions {
  /** A name for the key (provider-specific meaning). */
  name?: string;
  /**
   * The disk this key is made for, alone. Recorded with the key (local: a keystore field; KMIP: the
   * key's Name) so that a deep rekey of that disk knows it may retire the key. Absent: a shared key
   * (a batch's, one made by `keys create`), which a rekey never retires.
   */
  diskId?: string;
}

export interface KeyProvider {
  /** Stable id of this provider, recorded in lockers (e.g. "local", or a KMS cluster's name). */
  readonly id: string;
  /** Make a new KEK (AES-256) and return its reference. Needs the provider reachable. */
  createKey(opts?: CreateKeyOptions): Promise<KeyRef>;
  /**
   * Fetch a KEK's 32 bytes. The caller owns (and wipes) the returned buffer. A retired key is
   * refused (ERR_KEY_RETIRED) unless the provider was made to allow retired keys.
   */
  getKey(keyId: string): Promise<Buffer>;
  /** Retire a KEK for good (KMIP: Revoke then Destroy). Disks still locked by it become unopenable. */
  destroyKey(keyId: string): Promise<void>;
  /**
   * Take a KEK out of normal use but keep it, for restoring old backups (local: state "retired";
   * KMIP: Revoke). Optional: a provider without it never has keys retired by a rekey.
   */
  retireKey?(keyId: string): Promise<void>;
  /**
   * Remove a key that never locked anything (made by a job that did not complete). Optional: without
   * it, destroyKey is used (KMIP: Revoke then Destroy). The local keystore deletes the entry outright.
   */
  discardKey?(keyId: string): Promise<void>;
  /** The disk a key was created for alone (CreateKeyOptions.diskId), or undefined for a shared key. */
  keyOwner?(keyId: string): Promise<string | undefined>;
  /** Release connections and other resources. */
  close?(): Promise<void>;
}
