// One argument-error code for every layer above xts (ERR_INVALID_ARGUMENT), each layer's own error
// class, and one message shape written by one helper: "Expected <what> for <argument> but received
// <value>". The messages are asserted word for word so that a layer cannot drift back to its own.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BY_CODE } from '../src/cli/errors.js';
import { createEncryptedDisk, DiskError, openDisk } from '../src/disk/index.js';
import { describeChoice, expected, expectedOneOf, VmsealError } from '../src/errors.js';
import { KeyCache, KeyError, LocalKeyProvider, sealDek } from '../src/keys/index.js';
import { KmipError, KmipKeyProvider } from '../src/kmip/index.js';
import { encryptDisk, PipelineError } from '../src/pipeline/index.js';
import { createDisk, openDisk as openPlainDisk, VmdkFormatError } from '../src/vmdk/index.js';
import { XtsCipher } from '../src/xts/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vmseal-argerr-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function rejection(run: () => unknown): Promise<unknown> {
  try {
    await run();
  } catch (err) {
    return err;
  }
  throw new Error('expected the call to throw');
}

describe('the argument-error helper', () => {
  it('writes one shape and never echoes a received string', () => {
    expect(expected('a file path', 'path', 42)).toBe('Expected a file path for path but received 42 of type number');
    expect(expected('a Buffer', 'dek', 'hunter2 is my passphrase')).toBe('Expected a Buffer for dek but received a string of length 24');
  });

  it('quotes a short received name back for a choice, and nothing else', () => {
    expect(expectedOneOf(['vmdk', 'raw'], 'format', 'qcow2')).toBe("Expected 'vmdk' or 'raw' for format but received 'qcow2'");
    expect(expectedOneOf([512, 4096], 'unitSize', 1024)).toBe('Expected 512 or 4096 for unitSize but received 1024 of type number');
    expect(expectedOneOf(['a', 'b', 'c'], 'x', null)).toBe("Expected one of 'a', 'b', 'c' for x but received null");
    expect(describeChoice('not a name: has spaces')).toBe('a string of length 22');
    expect(describeChoice('x'.repeat(33))).toBe('a string of length 33');
  });
});

describe('every layer above xts throws ERR_INVALID_ARGUMENT from its own class', () => {
  const cases: [string, () => unknown, new (...args: never[]) => Error, string][] = [
    ['vmdk openDisk', () => openPlainDisk(42 as never), VmdkFormatError, 'Expected a file path for path but received 42 of type number'],
    [
      'vmdk openDisk format',
      () => openPlainDisk(join(dir, 'a.vmdk'), { format: 'qcow2' as never }),
      VmdkFormatError,
      "Expected 'vmdk' or 'raw' for options.format but received 'qcow2'",
    ],
    [
      'vmdk createDisk',
      () => createDisk(join(dir, 'b.vmdk'), { capacity: 1000 }),
      VmdkFormatError,
      'Expected a positive multiple of 512 for options.capacity but received 1000 of type number',
    ],
    [
      'vmdk createDisk subformat',
      () => createDisk(join(dir, 'b2.vmdk'), { capacity: 1 << 20, subformat: 'qcow2' as never }),
      VmdkFormatError,
      "Expected one of 'raw', 'monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized', 'vmfs' for options.subformat but received 'qcow2'",
    ],
    ['disk openDisk', () => openDisk(join(dir, 'c.vmdk'), null as never), DiskError, 'Expected an object for options but received null'],
    [
      'disk createEncryptedDisk',
      () => createEncryptedDisk(join(dir, 'd.vmdk'), { capacity: 1 << 20, cipher: 'aes-512-xts' as never, lockers: [] }),
      DiskError,
      "Expected 'aes-256-xts' or 'aes-128-xts' for cipher but received 'aes-512-xts'",
    ],
    [
      'pipeline encryptDisk',
      () => encryptDisk(join(dir, 'e.vmdk'), join(dir, 'f.vmdk'), { lockers: [], chunkSize: 1000 }),
      PipelineError,
      `Expected a multiple of 4096 from 4096 to ${256 << 20} for chunkSize but received 1000 of type number`,
    ],
    ['keys sealDek', () => sealDek(Buffer.alloc(64), null as never), KeyError, 'Expected an object for options but received null'],
    ['keys LocalKeyProvider', () => new LocalKeyProvider(null as never), KeyError, 'Expected an object for options but received null'],
    ['keys KeyCache', () => new KeyCache({ ttlMs: -1 }), KeyError, 'Expected a positive number of milliseconds for ttlMs but received -1 of type number'],
    [
      'kmip KmipKeyProvider',
      () => new KmipKeyProvider({ id: 'kms', endpoints: [] } as never),
      KmipError,
      'Expected a non-empty array of { host, port } for endpoints but received an array of length 0',
    ],
  ];

  it.each(cases)('%s', async (_name, run, cls, message) => {
    const err = await rejection(run);
    expect(err).toBeInstanceOf(cls);
    expect(err).toBeInstanceOf(VmsealError);
    expect(err).toMatchObject({ code: 'ERR_INVALID_ARGUMENT', message });
  });

  it('the XTS layer keeps Node-style TypeErrors in the same message shape', async () => {
    const err = await rejection(() => new XtsCipher('key' as never));
    expect(err).toBeInstanceOf(TypeError);
    expect(err).toMatchObject({ code: 'ERR_INVALID_ARG_TYPE' });
    expect((err as Error).message).toMatch(/^Expected .+ for key but received a string of length 3$/);
  });

  it('the retired per-layer codes are gone from the CLI table', () => {
    expect(Object.keys(BY_CODE)).not.toContain('ERR_ARGUMENT');
    expect(Object.keys(BY_CODE)).not.toContain('ERR_VMDK_ARGUMENT');
    expect(BY_CODE.ERR_INVALID_ARGUMENT.exitCode).toBe(2);
  });
});
