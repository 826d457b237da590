/**
 * A VM's new KEK made so that a crash cannot orphan it. The job file first records the intent — the
 * provider and a random key name, `vmseal-vm-kek-<uuid>` (folder-job.ts: `kekPending`) — and only
 * then is the key made under that name (KMIP: its Name attribute; the local keystore: its name); the
 * job file then records the key id. A run that finds the intent without a key id (the previous one
 * died between the two writes, maybe after the key was made) looks the name up and reuses the key
 * it finds, or makes it if there is none: one KEK per VM, never a second, unused one.
 */
import { randomUUID } from 'node:crypto';
import { KeyError, LocalKeyProvider, type KeyProvider } from '../keys/index.js';
import { KmipKeyProvider } from '../kmip/index.js';

/** The name a VM's new KEK is made under, recorded in the job file before the key is made. */
export function pendingKekName(): string {
  return `vmseal-vm-kek-${randomUUID()}`;
}

/**
 * The ids of the usable keys named `name`, or undefined when the provider cannot look names up (a
 * provider other than the local keystore and KMIP: the key is then made again, as before).
 */
async function keysNamed(provider: KeyProvider, name: string): Promise<string[] | undefined> {
  if (provider instanceof LocalKeyProvider) {
    // No keystore yet (the key was not made: createKey makes the keystore with the first key).
    const keys = await provider.list().catch((err: unknown) => {
      if (err instanceof KeyError && err.code === 'ERR_KEYSTORE_MISSING') return [];
      throw err;
    });
    return keys.filter((k) => k.name === name && k.state === 'active').map((k) => k.keyId);
  }
  if (provider instanceof KmipKeyProvider) return provider.locate(name);
  return undefined;
}

/** The key id of the pending KEK `name`: the one an earlier run made, else a new one made now. */
export async function makePendingKek(provider: KeyProvider, name: string): Promise<string> {
  const found = await keysNamed(provider, name);
  if (found !== undefined && found.length > 0) return found[0]!;
  return (await provider.createKey({ name })).keyId;
}
