// src/disk/params.ts is the one owner of the encryption policy: cipher names, DEK lengths, data-unit
// sizes, defaults and which subformats can carry an encrypted disk. The tables are checked against
// the primitives they build on, and the sources are scanned so that no other layer restates them.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import * as cliParse from '../../src/cli/parse.js';
import {
  CIPHERS,
  DEFAULT_CIPHER,
  DEFAULT_UNIT_SIZE,
  ENCRYPTABLE_SUBFORMATS,
  KEY_BYTES,
  MAX_UNIT_SIZE,
  UNIT_SIZES,
  canEncryptSubformat,
  checkEncryptionChoice,
  encryptedSubformatFor,
} from '../../src/disk/params.js';
import { DISK_CIPHERS, dekLength } from '../../src/keys/dek.js';
import { CHUNK_ALIGN } from '../../src/pipeline/options.js';
import { XTS_KEY_BYTES_128, XTS_KEY_BYTES_256 } from '../../src/xts/constants.js';

const root = join(import.meta.dirname, '..', '..');

/** Every .ts file under src/, with its comments removed (a comment may name a cipher). */
function sources(): { file: string; code: string }[] {
  return readdirSync(join(root, 'src'), { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => {
      const text = readFileSync(join(root, 'src', f), 'utf8');
      const code = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
      return { file: relative(root, join(root, 'src', f)), code };
    });
}

describe('the encryption policy table', () => {
  it('builds on the key layer and the XTS layer instead of restating them', () => {
    expect(CIPHERS).toBe(DISK_CIPHERS);
    expect(KEY_BYTES).toEqual({ 'aes-256-xts': XTS_KEY_BYTES_256, 'aes-128-xts': XTS_KEY_BYTES_128 });
    for (const c of CIPHERS) expect(KEY_BYTES[c]).toBe(dekLength(c));
  });

  it('has the documented defaults and sizes', () => {
    expect([DEFAULT_CIPHER, DEFAULT_UNIT_SIZE]).toEqual(['aes-256-xts', 512]);
    expect(UNIT_SIZES).toEqual([512, 4096]);
    expect(MAX_UNIT_SIZE).toBe(Math.max(...UNIT_SIZES));
    expect(CHUNK_ALIGN).toBe(MAX_UNIT_SIZE);
  });

  it('says which subformats can carry an encrypted disk, and what replaces the others', () => {
    expect(ENCRYPTABLE_SUBFORMATS).toEqual(['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'vmfs']);
    expect(canEncryptSubformat('raw')).toBe(false);
    expect(canEncryptSubformat('streamOptimized')).toBe(false);
    expect(encryptedSubformatFor('raw')).toBe('monolithicFlat');
    expect(encryptedSubformatFor('streamOptimized')).toBe('monolithicSparse');
    expect(encryptedSubformatFor('twoGbMaxExtentFlat')).toBe('twoGbMaxExtentFlat');
  });

  it('checks a cipher and unit size choice with the shared argument error', () => {
    expect(checkEncryptionChoice('aes-128-xts', 4096)).toEqual({ cipher: 'aes-128-xts', unitSize: 4096 });
    expect(() => checkEncryptionChoice('aes-256-xts', 1024)).toThrow('Expected 512 or 4096 for unitSize but received 1024 of type number');
  });

  it("is the CLI's table too", () => {
    expect(cliParse.CIPHERS).toBe(CIPHERS);
    expect(cliParse.UNIT_SIZES).toBe(UNIT_SIZES);
    expect(cliParse.ENCRYPTED_SUBFORMATS).toEqual(cliParse.SUBFORMATS.filter((s) => canEncryptSubformat(s)));
  });
});

describe('no other module restates the policy', () => {
  it('names the disk ciphers only in src/keys/dek.ts and src/disk/params.ts', () => {
    const owners = ['src/keys/dek.ts', 'src/disk/params.ts'];
    const offenders = sources()
      .filter(({ file, code }) => !owners.includes(file) && /aes-(128|256)-xts/.test(code))
      .map(({ file }) => file);
    expect(offenders).toEqual([]);
  });

  it('lists the data-unit sizes and the unencryptable subformats only in src/disk/params.ts', () => {
    const offenders = sources()
      .filter(({ file }) => file !== 'src/disk/params.ts')
      .filter(({ code }) => /\[\s*512\s*,\s*4096\s*\]|s !== 'raw' && s !== 'streamOptimized'|new Set\(\['raw', 'streamOptimized'\]\)/.test(code))
      .map(({ file }) => file);
    expect(offenders).toEqual([]);
  });
});
