// Deep rekey of a state file (reencryptStateFile): a file larger than the in-memory limit of the
// served UEFI variables (64 MiB, state-file-image.ts) — a .vmem — is re-encrypted one chunk at a
// time under a new file key and file id; it decrypts to the same bytes and no longer opens with the
// old key's locker alone.
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalKeyProvider } from '../../src/keys/index.js';
import { decryptStateFile, encryptStateFile, readStateFileHeader, STATE_CHUNK_SIZE } from '../../src/vm/index.js';
import { reencryptStateFile } from '../../src/vm/state-file-rekey.js';
import { STATE_IMAGE_MAX_BYTES } from '../../src/vm/state-file-image.js';
import { tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
let provider: LocalKeyProvider;
beforeAll(() => {
  tmp = tempDir('vmseal-state-rekey-');
  provider = new LocalKeyProvider({ home: join(tmp.dir, 'home') });
});
afterAll(async () => {
  await provider.close();
  tmp.cleanup();
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('reencryptStateFile', () => {
  it('re-encrypts a state file larger than 64 MiB chunk by chunk; it decrypts to the same bytes under the new key', async () => {
    const oldKek = (await provider.createKey({ name: 'old' })).keyId;
    const newKek = (await provider.createKey({ name: 'new' })).keyId;
    const size = STATE_IMAGE_MAX_BYTES + 3 * STATE_CHUNK_SIZE + 12345;
    const plain = randomBytes(size);
    const src = join(tmp.dir, 'vm.vmem.plain');
    const enc = join(tmp.dir, 'vm.vmem');
    writeFileSync(src, plain);
    await encryptStateFile(src, enc, { lockers: [{ kind: 'provider', provider, keyId: oldKek }], mode: 0o640 });
    const before = await readStateFileHeader(enc);

    const after = await reencryptStateFile(enc, { keys: { providers: [provider] }, lockers: [{ kind: 'provider', provider, keyId: newKek }] });
    expect(after.length).toBe(size);
    expect(after.fileId.equals(before.fileId)).toBe(false);
    // Key ids are escaped in a KeySafe (`-` as %2d).
    const escaped = (id: string) => id.replace(/-/g, '%2d');
    expect(after.keySafe).toContain(escaped(newKek));
    expect(after.keySafe).not.toContain(escaped(oldKek));
    expect(statSync(enc).mode & 0o777).toBe(0o640);
    expect(readdirSync(tmp.dir).filter((f) => f.startsWith('vm.vmem') && f !== 'vm.vmem' && f !== 'vm.vmem.plain')).toEqual([]);

    const out = join(tmp.dir, 'vm.vmem.out');
    await decryptStateFile(enc, out, { keys: { providers: [provider] } });
    expect(sha(readFileSync(out))).toBe(sha(plain));
  });
});
