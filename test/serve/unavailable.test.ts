// Which unlock failures make a served disk *locked* (retried) rather than refused: the one rule of
// src/serve/unavailable.ts, over the errors the key layer builds (test/serve/outage.test.ts runs it
// against a real stopped PyKMIP server).
import { describe, it, expect } from 'vitest';
import { KeyError, type UnlockAttempt } from '../../src/keys/index.js';
import { UNAVAILABLE_CODES, describeUnavailable, unavailableKey } from '../../src/serve/unavailable.js';

function attempt(code: string, extra: Partial<UnlockAttempt> = {}): UnlockAttempt {
  return { index: 0, kind: 'provider', providerId: 'kms1', keyId: '42', code, message: `failed with ${code}`, ...extra };
}

function locked(...attempts: UnlockAttempt[]): KeyError {
  return new KeyError('ERR_DISK_LOCKED', 'the disk is locked', { providerId: 'kms1', keyId: '42', attempts });
}

describe('unavailableKey', () => {
  it('an unreachable KMS or a busy keystore locks the disk', () => {
    expect([...UNAVAILABLE_CODES].sort()).toEqual(['ERR_KEYSTORE_LOCKED', 'ERR_KMIP_CONNECT', 'ERR_KMIP_TIMEOUT', 'ERR_KMS_UNAVAILABLE']);
    for (const code of UNAVAILABLE_CODES) {
      expect(unavailableKey(locked(attempt(code)))).toEqual({ providerId: 'kms1', keyId: '42', cause: `failed with ${code}` });
    }
  });

  it('names the first unavailable key when other lockers failed otherwise', () => {
    const err = locked(
      attempt('ERR_DISK_LOCKED', { providerId: 'other', keyId: '1', message: "no key provider 'other' was given" }),
      attempt('ERR_KMS_UNAVAILABLE', { index: 1, keyId: '7', message: 'no KMS node answered' }),
    );
    const why = unavailableKey(err)!;
    expect(why).toEqual({ providerId: 'kms1', keyId: '7', cause: 'no KMS node answered' });
    expect(describeUnavailable(why)).toBe('key 7 of provider kms1 unavailable: no KMS node answered');
  });

  it('everything else is a hard error', () => {
    // Refused TLS credentials, a KMS that answers "no", a closed client, a provider not configured.
    for (const code of ['ERR_KMIP_TLS', 'ERR_KMIP_OPERATION_FAILED', 'ERR_KMIP_CLOSED', 'ERR_DISK_LOCKED', 'ERR_KEY_PROVIDER', 'ERR_KEYSTORE_MISSING']) {
      expect(unavailableKey(locked(attempt(code)))).toBeUndefined();
    }
    expect(unavailableKey(new KeyError('ERR_WRONG_KEY', 'wrong passphrase', { attempts: [attempt('ERR_KMS_UNAVAILABLE')] }))).toBeUndefined();
    expect(unavailableKey(new KeyError('ERR_KEY_RETIRED', 'retired', { attempts: [attempt('ERR_KMS_UNAVAILABLE')] }))).toBeUndefined();
    expect(unavailableKey(new KeyError('ERR_NO_KEY', 'no key'))).toBeUndefined();
    expect(unavailableKey(locked())).toBeUndefined();
    expect(unavailableKey(new Error('ECONNREFUSED'))).toBeUndefined();
    expect(unavailableKey(undefined)).toBeUndefined();
  });
});
