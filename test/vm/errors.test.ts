// The VM layer's one error class: the .vmx code, the state-file container and the manifest all throw
// a VmError, and `file`, `line` and `chunk` exist on an error only when they say something about it.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as api from '../../src/index.js';
import { VmsealError } from '../../src/errors.js';
import { decryptStateFile, encryptStateFile, MANIFEST_NAME, readManifest, readStateFileHeader, VmError, VmxFile } from '../../src/vm/index.js';
import { phraseLocker, tempDir } from '../disk/helpers.js';

let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir('vmseal-vmerr-');
});
afterAll(() => tmp.cleanup());

/** What `fn` threw (or rejected with), checked to be a VmError. */
async function vmError(fn: () => unknown): Promise<VmError> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(VmError);
  expect(caught).toBeInstanceOf(VmsealError);
  return caught as VmError;
}

describe('VmError', () => {
  it('is the one error class the package exports for the VM layer', () => {
    expect(api.VmError).toBe(VmError);
    expect(Object.keys(api)).not.toContain('VmxError');
    expect(Object.keys(api)).not.toContain('VmStateError');
  });

  it('a .vmx line error carries `line`, and `file` only when the .vmx was named', async () => {
    const bytes = Buffer.from('a = "1"\nnot a vmx line\n');
    const bare = await vmError(() => VmxFile.parse(bytes));
    expect(bare.code).toBe('ERR_VMX_FORMAT');
    expect(bare.name).toBe('VmError');
    expect(bare.line).toBe(2);
    expect('file' in bare).toBe(false);
    expect('chunk' in bare).toBe(false);

    const named = await vmError(() => VmxFile.parse(bytes, '/vms/a/a.vmx'));
    expect(named.file).toBe('/vms/a/a.vmx');
    expect(named.line).toBe(2);
    expect(Object.keys(named).filter((k) => ['file', 'line', 'chunk'].includes(k))).toEqual(['file', 'line']);
  });

  it('a state file chunk that does not authenticate carries `file` and `chunk`, no `line`', async () => {
    const plain = join(tmp.dir, 'plain.nvram');
    const enc = join(tmp.dir, 'enc.nvram');
    writeFileSync(plain, Buffer.alloc(1000, 7));
    await encryptStateFile(plain, enc, { lockers: [phraseLocker('pw')] });
    const { headerBytes } = await readStateFileHeader(enc);
    const bytes = readFileSync(enc);
    bytes[headerBytes + 10]! ^= 1;
    writeFileSync(enc, bytes);
    const err = await vmError(() => decryptStateFile(enc, join(tmp.dir, 'out.nvram'), { keys: { passphrase: 'pw' } }));
    expect(err.code).toBe('ERR_VM_STATE_AUTH');
    expect(err.file).toBe(enc);
    expect(err.chunk).toBe(0);
    expect('line' in err).toBe(false);
  });

  it('a manifest error carries `file` and neither `line` nor `chunk`', async () => {
    writeFileSync(join(tmp.dir, MANIFEST_NAME), '{ not json');
    const err = await vmError(() => readManifest(tmp.dir));
    expect(err.code).toBe('ERR_VM_MANIFEST');
    expect(err.file).toBe(join(tmp.dir, MANIFEST_NAME));
    expect('line' in err).toBe(false);
    expect('chunk' in err).toBe(false);
  });

  it('an argument error carries none of the three', () => {
    const err = new VmError('ERR_INVALID_ARGUMENT', 'Expected a path for the VM folder but received undefined', { file: undefined });
    expect(Object.keys(err).sort()).toEqual(['code', 'name']);
    expect(JSON.parse(JSON.stringify(err))).toEqual({ code: 'ERR_INVALID_ARGUMENT', name: 'VmError' });
  });
});
