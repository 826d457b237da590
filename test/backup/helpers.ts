// Helpers of the backup tests: encrypted disks with known content, and what a disk holds seen by
// independent tools (qemu-img's raw view of the ciphertext) and decrypted by vmseal.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'vitest';
import type { BackupError } from '../../src/backup/index.js';
import { createEncryptedDisk, openDisk } from '../../src/disk/index.js';
import { cleanEnv } from '../cli/run-cli.js';
import { phraseLocker } from '../disk/helpers.js';

export const PASS = 'backup-test-passphrase';
const execFileP = promisify(execFile);

export async function run(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await execFileP(cmd, args, { maxBuffer: 64 << 20 });
  return stdout;
}

export type Sub = 'monolithicSparse' | 'monolithicFlat' | 'twoGbMaxExtentSparse' | 'twoGbMaxExtentFlat';

/** An encrypted disk `dir/name.vmdk` with each piece written at its offset (the rest reads as zeros). */
export async function encryptedDisk(
  dir: string,
  name: string,
  subformat: Sub,
  capacity: number,
  pieces: Array<{ at: number; data: Buffer }>,
  extra: { unitSize?: 512 | 4096; grainSize?: number } = {},
): Promise<string> {
  const path = join(dir, `${name}.vmdk`);
  const d = await createEncryptedDisk(path, { capacity, subformat, lockers: [phraseLocker(PASS)], ...extra });
  try {
    for (const p of pieces) await d.write(p.at, p.data);
  } finally {
    await d.close();
  }
  return path;
}

/** SHA-256 of the whole plaintext of an encrypted disk, read by vmseal. */
export async function plainSha(path: string): Promise<string> {
  const d = await openDisk(path, { keys: { passphrase: PASS }, readOnly: true });
  try {
    const h = createHash('sha256');
    for (let off = 0; off < d.capacity; off += 8 << 20) h.update(await d.read(off, Math.min(8 << 20, d.capacity - off)));
    return h.digest('hex');
  } finally {
    await d.close();
  }
}

/** qemu-img's raw view of a disk (for an encrypted disk: its ciphertext, no key involved). */
export async function qemuRaw(path: string, out: string): Promise<Buffer> {
  await run('qemu-img', ['convert', '-f', 'vmdk', '-O', 'raw', path, out]);
  return readFileSync(out);
}

/** The bytes of [at, at+length) of qemu-img's allocation map that hold data. */
export async function qemuDataBytes(path: string): Promise<number> {
  const map = JSON.parse(await run('qemu-img', ['map', '--output=json', path])) as Array<{ length: number; data: boolean }>;
  return map.filter((e) => e.data).reduce((n, e) => n + e.length, 0);
}

/** The descriptor text of a disk without its extent lines (which name the disk's own files). */
export function descriptorWithoutExtents(text: string): string {
  return text
    .split('\n')
    .filter((l) => !/^\s*(RW|RDONLY|NOACCESS)\s/.test(l))
    .join('\n');
}

/** The error a backup call rejects with (the test fails if it resolves instead). */
export async function backupErrorOf(p: Promise<unknown>): Promise<BackupError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Error);
  return err as BackupError;
}

/** The CLI's environment with an empty keystore under `dir`: only a passphrase can open a disk. */
export function noKeyEnv(dir: string): NodeJS.ProcessEnv {
  return cleanEnv({ VMSEAL_HOME: join(dir, 'no-home') });
}
