// The library's public surface: docs/api.md names every export, openDisk's result is a discriminated
// union, disks close with `await using`, and the published types carry no @internal member.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as api from '../src/index.js';
import { openDisk, createEncryptedDisk, EncryptedDisk } from '../src/index.js';
import { phraseLocker, tempDir } from './disk/helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-api-');
});
afterAll(() => tmp.cleanup());

describe('docs/api.md', () => {
  it('names every runtime export of the package root', () => {
    const doc = readFileSync(join(root, 'docs', 'api.md'), 'utf8');
    const missing = Object.keys(api).filter((name) => !new RegExp('`' + name + '\\b').test(doc));
    expect(missing, `exports not documented in docs/api.md: ${missing.join(', ')}`).toEqual([]);
  });
});

describe('openDisk', () => {
  it('returns a discriminated union on `encrypted`', async () => {
    const plain = join(tmp.dir, 'plain.raw');
    writeFileSync(plain, Buffer.alloc(1 << 20));
    const enc = join(tmp.dir, 'enc.vmdk');
    const made = await createEncryptedDisk(enc, { capacity: 1 << 20, subformat: 'monolithicSparse', lockers: [phraseLocker('pw')] });
    await made.close();
    for (const [path, keys] of [
      [plain, undefined],
      [enc, { passphrase: 'pw' }],
    ] as const) {
      const d = await openDisk(path, keys ? { keys } : {});
      try {
        if (d.encrypted) {
          // Narrowed to EncryptedDisk: its own members type-check here and only here.
          expect(d).toBeInstanceOf(EncryptedDisk);
          expect(d.encryption.cipher).toBe('aes-256-xts');
        } else {
          expect(d.format).toBe('raw');
          expect(d.encrypted).toBe(false);
        }
      } finally {
        await d.close();
      }
    }
  });

  it('closes the disk at the end of an `await using` block', async () => {
    const plain = join(tmp.dir, 'using.raw');
    writeFileSync(plain, Buffer.alloc(65536));
    let escaped: Awaited<ReturnType<typeof openDisk>> | undefined;
    {
      await using d = await openDisk(plain);
      escaped = d;
      expect((await d.read(0, 512)).length).toBe(512);
    }
    await expect(escaped!.read(0, 512)).rejects.toThrow();
  });
});

describe('published types', () => {
  const dts = join(root, 'dist', 'index.d.ts');
  it.skipIf(!existsSync(dts))('carry no @internal member (npm test builds dist first)', () => {
    const text = readFileSync(dts, 'utf8');
    expect(text).not.toContain('@internal');
    expect(text).not.toMatch(/\binnerDisk\b/);
    expect(text).not.toMatch(/\bdataCipher\b/);
  });
});
