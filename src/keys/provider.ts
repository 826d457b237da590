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

export interface KeyProvider {
  /** Stable id of this provider, recorded in lockers (e.g. "local", or a KMS cluster's name). */
  readonly id: string;
  /** Make a new KEK (AES-256) and return its reference. Needs the provider reachable. */
  createKey(opts?: { name?: string }): Promise<KeyRef>;
  /** Fetch a KEK's 32 bytes. The caller owns (and wipes) the returned buffer. */
  getKey(keyId: string): Promise<Buffer>;
  /** Retire a KEK for good (KMIP: Revoke then Destroy). Disks still locked by it become unopenable. */
  destroyKey(keyId: string): Promise<void>;
  /** Release connections and other resources. */
  close?(): Promise<void>;
}
