/**
 * Rekeys of an encrypted .vmx, each one atomic rewrite under the .vmx's lock (vmx-io.ts):
 *
 *   shallow  the same config key under other lockers: only the value of `encryption.keySafe`
 *            changes; every other line, `encryption.data` included, stays byte for byte;
 *   deep     a new config key: the .vmx is decrypted in memory and encrypted again under the new
 *            lockers (a new IV and MAC; the plain text comes back byte for byte on decryption).
 */
import { rewrapKeySafe, type KeyCache, type LockerInfo, type LockerSpec, type UnlockOptions } from '../keys/index.js';
import { VmError } from './errors.js';
import { decryptVmx, encryptVmx, isEncryptedVmx, VMX_KEYSAFE_KEY } from './vmx-crypt.js';
import { VmxFile } from './vmx-file.js';
import { rewriteVmxFile } from './vmx-io.js';

export interface RewrapVmxOptions {
  keys: UnlockOptions;
  add?: LockerSpec[];
  remove?: (locker: LockerInfo) => boolean;
  cache?: KeyCache;
}

/** Shallow rekey of the encrypted .vmx `vmx`: only its KeySafe changes. */
export async function rewrapVmxFile(vmx: string, options: RewrapVmxOptions): Promise<void> {
  await rewriteVmxFile(vmx, 'vm rekey', async (bytes) => {
    const file = VmxFile.parse(bytes, vmx);
    if (!isEncryptedVmx(file)) throw new VmError('ERR_VMX_NOT_ENCRYPTED', `${vmx} is not encrypted: it has no config key to rekey`, { file: vmx });
    const line = file.entries(VMX_KEYSAFE_KEY).at(-1)!;
    const keySafe = await rewrapKeySafe(file.rawBytes(VMX_KEYSAFE_KEY)!.toString('latin1'), {
      unlock: options.keys,
      ...(options.add ? { add: options.add } : {}),
      ...(options.remove ? { remove: options.remove } : {}),
      ...(options.cache ? { cache: options.cache } : {}),
    });
    // A KeySafe is %-escaped printable ASCII: it needs no '|xx' escape inside the quotes.
    const lines = file.lines.map((l) => (l === line ? { ...l, raw: `${l.key!} = "${keySafe}"`, rawValue: keySafe } : l));
    return { bytes: VmxFile.fromLines(lines, vmx).toBuffer(), result: undefined };
  });
}

/** Deep rekey of the encrypted .vmx `vmx`: a new config key under `lockers`. */
export async function reencryptVmxFile(vmx: string, options: { keys: UnlockOptions; lockers: LockerSpec[]; cache?: KeyCache }): Promise<void> {
  await rewriteVmxFile(vmx, 'vm rekey', async (bytes) => {
    const { plain } = await decryptVmx(bytes, options.keys, vmx);
    try {
      return { bytes: await encryptVmx(plain, { lockers: options.lockers, ...(options.cache ? { cache: options.cache } : {}) }), result: undefined };
    } finally {
      plain.fill(0);
    }
  });
}
