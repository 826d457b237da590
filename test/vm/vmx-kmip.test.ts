// A .vmx whose config key is locked by a KEK of a real KMIP server (PyKMIP): it opens through the
// provider, also when the server is gone if the KEK is cached, and not without the server.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KeyCache } from '../../src/keys/index.js';
import { KmipKeyProvider } from '../../src/kmip/index.js';
import { decryptVmx, encryptVmx, vmxLockers } from '../../src/vm/vmx-crypt.js';
import { VmxFile } from '../../src/vm/vmx-file.js';
import { startPyKmip, type PyKmip } from '../helpers/pykmip.js';

let kms: PyKmip;
const providers: KmipKeyProvider[] = [];
function provider(): KmipKeyProvider {
  const p = new KmipKeyProvider({ ...kms.providerOptions('vm-kms'), timeoutMs: 5000 });
  providers.push(p);
  return p;
}

beforeAll(async () => {
  kms = await startPyKmip();
}, 60_000);
afterAll(async () => {
  for (const p of providers) await p.close();
  await kms?.stop();
});

describe('a .vmx locked by a KMIP key', () => {
  it('opens with the provider that holds the KEK, and with a cache once the server is stopped', async () => {
    const plain = Buffer.from('.encoding = "UTF-8"\ndisplayName = "kmip"\nguestOS = "other"\nmemsize = "256"\n');
    const out = await encryptVmx(plain, { lockers: [{ kind: 'provider', provider: provider() }] });
    const [locker] = vmxLockers(VmxFile.parse(out));
    expect(locker).toMatchObject({ kind: 'provider', providerId: 'vm-kms', mac: 'VMSEAL-ETM-HMAC-SHA-256' });
    const reader = provider();
    const cache = new KeyCache();
    const r = await decryptVmx(out, { providers: [reader], cache });
    expect(r.plain.equals(plain)).toBe(true);
    expect(r.unlockedBy).toMatchObject({ kind: 'provider', providerId: 'vm-kms', keyId: locker!.keyId, fromCache: false });
    await kms.stop();
    const cached = await decryptVmx(out, { providers: [reader], cache });
    expect(cached.unlockedBy).toMatchObject({ kind: 'provider', fromCache: true });
    const locked = await decryptVmx(out, { providers: [provider()] }).catch((e: { code: string }) => e);
    expect((locked as { code: string }).code).toBe('ERR_DISK_LOCKED');
  }, 60_000);
});
