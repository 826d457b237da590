/** Key options of the `vmseal vm …` commands, and how an encrypted .vmx is opened. */
import type { LockerInfo, UnlockOptions } from '../../keys/index.js';
import type { KeyCliOptions, KeySession } from '../key-session.js';

export interface VmCliOptions extends KeyCliOptions {
  configOnly?: boolean;
  /** encrypt: one passphrase locker in VMware Workstation's construction (PBKDF2-HMAC-SHA-1, 10,000 rounds). */
  workstation?: boolean;
}

/** Unlock options for an encrypted .vmx; the passphrase is asked for when only phrase lockers can open it. */
export async function vmxUnlock(keys: KeySession, vmx: string, keySafeLockers: LockerInfo[], keySafe: string, allowPrompt: boolean): Promise<UnlockOptions> {
  const onlyPhrase = keySafeLockers.every((l) => l.kind === 'passphrase');
  const usePassphrase = keys.passphraseGiven || (allowPrompt && onlyPhrase);
  return keys.unlockOptions(vmx, { keySafe, usePassphrase });
}
